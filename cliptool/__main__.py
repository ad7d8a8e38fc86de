from cliptool.cli import run

run()
