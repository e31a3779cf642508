"""Which splits `semipd doctor` compares to see a split act on compute, for each partition's menu."""

from engine.partition.green_contexts import GreenContexts
from engine.partition.mps import MpsPrefillShare
from stack.doctor import compared_splits, valid_splits


def test_on_cpu_decode_is_compared_at_its_smallest_and_largest_disjoint_share():
    splits = valid_splits({"units": 4})
    assert compared_splits(splits, 4) == ("decode", ((3, 1), (1, 3)))
    assert compared_splits(valid_splits({"units": 2}), 2) is None  # 1,1 is the only disjoint split


def test_with_sm_splits_decode_is_compared_and_the_whole_device_left_out():
    menu = GreenContexts(device_sms=132, min_sms=8, step=8).menu()
    assert compared_splits(valid_splits({"menu": menu, "units": 132}), 132) == ("decode", ((120, 12), (8, 124)))


def test_under_mps_decode_keeps_every_sm_so_prefill_is_compared():
    state = {"menu": [list(pair) for pair in MpsPrefillShare().menu()], "units": 100}
    assert compared_splits(valid_splits(state), 100) == ("prefill", ((20, 100), (90, 100)))
    assert compared_splits([(50, 100), (100, 100)], 100) is None  # one prefill share
