"""`compute-node nodes`: the reputation table from a publisher's data dir, as text or JSON."""

import json

from pytest import approx

from node.cli.main import main
from node.cli.nodes import reputation_path
from node.publisher.reputation import Reputation

A, B = "a" * 40, "b" * 40


def test_nodes_prints_what_the_publisher_measured(tmp_path, capsys) -> None:
    table = Reputation(reputation_path(tmp_path))
    for _ in range(3):
        table.record_result(A, 1.0, 40, 1.0, 1e6)
    table.record_verification(B, passed=False)
    table.close()

    assert main(["nodes", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = {row["address"]: row for row in json.loads(capsys.readouterr().out)["nodes"]}
    assert rows[A]["answered"] == approx(3) and rows[A]["measured_tps"] == approx(40)
    assert rows[A]["penalty"] == approx(0.02)  # claimed 1e6: the floor
    assert rows[B]["verify_failed"] == 1 and rows[B]["banned_until"] is not None and rows[B]["score"] == 0

    assert main(["nodes", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["address", "answered", "errors"]
    assert lines[1].startswith(A) and lines[2].startswith(B) and "h more" in lines[2]


def test_nodes_without_a_table_says_so(tmp_path, capsys) -> None:
    assert main(["nodes", "--data-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "no node measured yet" in out and f"no reputation table at {tmp_path / 'none' / 'reputation.sqlite3'}" in out
    assert not (tmp_path / "none").exists()  # looking creates nothing


def test_nodes_on_a_file_that_is_no_table_says_so_and_fails(tmp_path, capsys) -> None:
    (tmp_path / "reputation.sqlite3").write_bytes(b"not a database" * 100)
    assert main(["nodes", "--data-dir", str(tmp_path)]) == 1  # was 0 and "(no node measured yet)"
    err = capsys.readouterr().err
    assert "cannot read the reputation table" in err and "reputation.sqlite3" in err
