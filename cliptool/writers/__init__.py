"""What a result becomes for a person or another program: an HTML contact sheet, an editor's
timeline (OpenTimelineIO, CMX 3600 EDL), video clips, a player opened at the moment.

Writers sit beside the pipeline: they take `Hit`s and video records from the public API and
nothing in a stage imports them.
"""
