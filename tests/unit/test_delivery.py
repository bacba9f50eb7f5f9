"""The delivery check the soak and the e2e traffic rely on (loadtest/delivery.py)."""

import json

from loadtest.delivery import Receipt, new_totals


def fresh(welcome_seq=10):
    receipt = Receipt(new_totals())
    assert receipt.query() == ""
    receipt.welcome({"seq": welcome_seq})
    return receipt


def test_consecutive_seqs_across_a_resume_are_clean_and_the_replay_is_counted():
    receipt = fresh()
    assert [receipt.message(seq) for seq in (11, 12)] == [None, None]
    assert receipt.query() == "?since=12"
    receipt.welcome({"seq": 15})
    assert [receipt.message(seq) for seq in (13, 14, 15, 16)] == [None] * 4
    totals = receipt.totals
    assert (totals["received"], totals["resumes"], totals["replayed"], totals["max_replay"]) == (6, 1, 3, 3)
    assert totals["lost"] == totals["duplicated"] == totals["out_of_order"] == 0


def test_a_gap_is_lost_a_repeat_is_duplicated_a_late_one_is_out_of_order():
    receipt = fresh()
    assert receipt.message(13) == "lost"
    assert receipt.totals["lost"] == 2
    assert receipt.message(13) == "duplicated"
    assert receipt.message(11) == "out_of_order"
    assert (receipt.totals["lost"], receipt.totals["duplicated"], receipt.totals["out_of_order"]) == (1, 1, 1)


def test_a_too_old_resync_counts_what_it_skips_as_lost():
    receipt = fresh()
    receipt.query()
    receipt.welcome({"seq": 2000})
    receipt.resync({"reason": "too_old", "from": 1001, "seq": 2000})
    assert receipt.message(1001) is None
    assert receipt.totals["lost"] == 990 and receipt.totals["resync_too_old"] == 1
    assert receipt.totals["replayed"] == 1000


def test_an_ahead_resync_starts_again_from_its_from_without_loss():
    receipt = fresh()
    receipt.query()
    receipt.welcome({"seq": 1})
    receipt.resync({"reason": "ahead", "from": 1, "seq": 1})
    assert receipt.message(1) is None
    assert receipt.totals["lost"] == 0 and receipt.totals["resync_ahead"] == 1


def test_the_soak_report_fails_on_a_lost_or_duplicated_message(tmp_path):
    from loadtest import check_report

    stats = tmp_path / "stats.csv"
    stats.write_text("Type,Name,Request Count,Failure Count\nWS,message,10,0\n,Aggregated,10,0\n")
    clean = dict(new_totals(), received=10, sent=10, max_handover_ms=5)
    for name, value, expected in (("lost", 0, 0), ("lost", 1, 1), ("duplicated", 2, 1), ("received", 0, 1)):
        delivery = tmp_path / "delivery.json"
        delivery.write_text(json.dumps(dict(clean, **{name: value})))
        assert check_report.main(str(stats), str(delivery)) == expected, (name, value)
    assert check_report.main(str(stats), str(tmp_path / "missing.json")) == 1
