"""LineState: scatter driver batches, gather the detector frame, staleness."""

import numpy as np
import pytest

from controller.linestate import LineState
from drivers.base import Quality, ReadingBatch


def batch(index, values, quality, now=100.0):
    n = len(index)
    return ReadingBatch(index=np.asarray(index, np.int32), values=np.asarray(values, float),
                        quality=np.asarray(quality, np.uint8), source_ts=np.full(n, now - 0.01),
                        receive_ts=np.full(n, now))


def test_batches_from_two_drivers_land_in_the_detector_frame_in_model_order():
    state = LineState(["a", "b", "c", "d"], detector_tags=["d", "b", "a"])
    plc1, plc2 = state.binding(["a", "b"]), state.binding(["c", "d"])
    state.apply(plc1, batch([1, 0], [2.0, 1.0], [Quality.GOOD, Quality.GOOD]))
    state.apply(plc2, batch([1], [4.0], [Quality.BAD]))
    state.gather_frame()
    np.testing.assert_array_equal(state.frame_values, [4.0, 2.0, 1.0])
    np.testing.assert_array_equal(state.frame_fresh, [1, 1, 1])
    np.testing.assert_array_equal(state.frame_good, [0, 1, 1])  # d arrived BAD
    state.clear_fresh()
    # Nothing new: values held, nothing fresh.
    state.gather_frame()
    np.testing.assert_array_equal(state.frame_values, [4.0, 2.0, 1.0])
    np.testing.assert_array_equal(state.frame_fresh, [0, 0, 0])


def test_stale_after_timeout_only_once_and_never_good_counts_as_stale():
    state = LineState(["a", "b"], detector_tags=["a", "b"])
    state.apply(state.binding(["a", "b"]), batch([0, 1], [1.0, 2.0], [Quality.GOOD] * 2), mono=10.0)
    state.clear_fresh()
    timeout = np.array([1.0, 5.0])
    assert state.mark_stale(10.5, timeout).tolist() == []
    assert state.mark_stale(11.5, timeout).tolist() == [0]
    assert state.quality[0] == Quality.STALE and np.isnan(state.values[0])
    assert state.mark_stale(12.0, timeout).tolist() == []  # already stale: no new event
    state.gather_frame()  # the detector's next step sees the stale tag as fresh and not good
    assert state.frame_fresh.tolist() == [1, 0] and state.frame_good.tolist() == [0, 1]
    fresh = LineState(["x"], ["x"])
    fresh.quality[:] = Quality.GOOD
    assert fresh.mark_stale(0.0, np.array([1.0])).tolist() == [0]


def test_comm_lost_batch_marks_every_tag_of_that_plc():
    state = LineState(["a", "b", "c"], detector_tags=["a", "b", "c"])
    state.apply(state.binding(["a", "b", "c"]), batch([0, 1, 2], [1, 2, 3], [Quality.GOOD] * 3))
    state.apply(state.binding(["b", "c"]), ReadingBatch.empty_for([0, 1], Quality.COMM_LOST))
    assert [Quality(q) for q in state.quality] == [Quality.GOOD, Quality.COMM_LOST, Quality.COMM_LOST]


def test_mark_lost_makes_a_silent_plcs_tags_unknown_and_fresh():
    state = LineState(["a", "b"], detector_tags=["a", "b"])
    state.apply(state.binding(["a", "b"]), batch([0, 1], [1.0, 2.0], [Quality.GOOD] * 2))
    state.clear_fresh()
    state.mark_lost(state.binding(["b"]))
    assert Quality(state.quality[1]) is Quality.COMM_LOST and np.isnan(state.values[1])
    assert state.fresh.tolist() == [0, 1] and state.values[0] == 1.0


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unique"):
        LineState(["a", "a"], ["a"])
    with pytest.raises(ValueError, match="not on the line: z"):
        LineState(["a"], ["z"])


def test_text_is_kept_for_display_and_a_detector_text_tag_is_never_good_in_the_frame():
    state = LineState(["name", "a", "msg"], detector_tags=["a", "msg"])
    plc = state.binding(["name", "a", "msg"])
    good = [Quality.GOOD] * 3
    text = batch([0, 1, 2], [np.nan, 1.0, np.nan], good)
    text.text = ["PUMP-7", None, "ok"]
    state.apply(plc, text)
    state.gather_frame()
    assert state.frame_good.tolist() == [1, 0]  # msg carries text: not good for the detector
    assert state.take_text_in_detector() == ["msg"] and state.take_text_in_detector() == []
    rows = {r["tag"]: r for r in state.snapshot()}
    assert rows["name"]["text"] == "PUMP-7" and rows["name"]["value"] is None
    assert rows["a"]["text"] is None and rows["a"]["value"] == 1.0
    state.apply(plc, batch([1], [2.0], [Quality.GOOD]))  # a numeric batch leaves the text alone
    state.apply(plc, text)  # the same tag again: reported once only
    assert state.take_text_in_detector() == [] and state.snapshot()[0]["text"] == "PUMP-7"
    state.gather_frame()
    assert state.frame_good.tolist() == [1, 0]
    state.mark_lost(plc)  # lost: the last text is not shown as if current
    assert all(r["text"] is None for r in state.snapshot())
