from cliptool.media.decode import Frame
from cliptool.analysis.sample import SceneCutter, sample_positions


def feed(cutter: SceneCutter, n: int, fps: float, cuts: dict[int, list[int]]) -> list:  # type: ignore[type-arg]
    closed = []
    for i in range(n):
        closed += cutter.add_frame(Frame(i, i / fps, None))
        closed += cutter.add_cuts(cuts.get(i, []))
    return closed + cutter.finish(n / fps)


def test_samples_are_spread_away_from_the_cut_edges() -> None:
    assert sample_positions(0, 100, 3) == [25, 50, 75]
    assert sample_positions(10, 12, 3) == [10, 11]


def test_cuts_reported_late_still_split_at_the_cut_frame() -> None:
    cutter = SceneCutter(max_scene_seconds=0, samples_per_scene=3, frame_bytes=100)
    scenes = feed(cutter, 100, 25.0, {45: [40]})  # detector reports cut 40 at frame 45
    assert [(s.start_frame, s.end_frame) for s in scenes] == [(0, 40), (40, 100)]
    assert scenes[0].end_time == 40 / 25 and scenes[1].start_time == 40 / 25
    for s in scenes:
        assert len(s.samples) == 3
        assert all(s.start_frame < f.index < s.end_frame for f in s.samples)


def test_long_shots_are_split_into_bounded_windows_with_bounded_memory() -> None:
    cutter = SceneCutter(max_scene_seconds=10.0, samples_per_scene=3, frame_bytes=1920 * 1080 * 3 // 2)
    scenes = feed(cutter, 30 * 65, 30.0, {})
    assert len(scenes) == 7
    assert all(s.end_time - s.start_time <= 10.0 + 1e-9 for s in scenes)
    assert scenes[-1].end_time == 65.0
    assert len(cutter._candidates) <= cutter.max_candidates


def test_a_shot_a_little_longer_than_the_limit_gives_two_equal_windows() -> None:
    cutter = SceneCutter(max_scene_seconds=10.0, samples_per_scene=3, frame_bytes=100)
    scenes = feed(cutter, 306, 30.0, {})  # 10.2 s, one shot
    assert [(s.start_frame, s.end_frame) for s in scenes] == [(0, 153), (153, 306)]
    assert [round(s.end_time - s.start_time, 6) for s in scenes] == [5.1, 5.1]
    assert [s.continues_shot for s in scenes] == [False, True]
    for s in scenes:
        assert len(s.samples) == 3 and all(s.start_frame < f.index < s.end_frame for f in s.samples)


def test_windows_are_balanced_never_longer_than_the_limit_and_cuts_stay() -> None:
    for frames, cuts in [(30 * 25, {}), (30 * 19, {}), (30 * 95 + 7, {}), (30 * 43, {420: [400], 1000: [990]})]:
        cutter = SceneCutter(max_scene_seconds=10.0, samples_per_scene=3, frame_bytes=1920 * 1080 * 3 // 2)
        scenes = feed(cutter, frames, 30.0, cuts)
        lengths = [s.end_time - s.start_time for s in scenes]
        assert max(lengths) <= 10.0 + 1e-9, lengths
        assert all(a.end_frame == b.start_frame for a, b in zip(scenes, scenes[1:]))
        starts = {s.start_frame for s in scenes if not s.continues_shot}
        assert starts == {0, *[c for cs in cuts.values() for c in cs]}
        # inside a shot, the last windows share its remainder equally: no sliver
        for shot_end in sorted(starts)[1:] + [frames]:
            shot = [s for s in scenes if s.end_frame <= shot_end and s.start_frame < shot_end][-2:]
            if len(shot) == 2 and shot[1].continues_shot:
                a, b = (s.end_time - s.start_time for s in shot)
                assert abs(a - b) <= 1 / 30 + 1e-9, (a, b)
    cutter = SceneCutter(max_scene_seconds=10.0, samples_per_scene=3, frame_bytes=1)
    scenes = feed(cutter, 30 * 19, 30.0, {})
    assert [round(s.end_time - s.start_time, 6) for s in scenes] == [9.5, 9.5]
