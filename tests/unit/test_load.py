"""``backstock load`` without Backstock: reading, the header convention, conversions, chunking,
validation with line numbers, the failed-rows file, the state file, and its client's answer to
a 429 (from a stub server that refuses once)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from backstock.cli import app
from backstock.cli.load import (
    ERROR_COLUMNS,
    Client,
    InputError,
    State,
    failed_path,
    job_body,
    locate,
    make_chunks,
    prepare,
    rate_limit_state,
    read_records,
    write_failed,
)
from backstock.domain import bodies
from backstock.domain.resources import ITEM, VARIANT

VARIANT_HEADER = [
    "external_id", "item", "title", "description", "sku", "inventory_quantity", "price", "url",
]  # fmt: skip


def variant_cells(n: int, **changes: str) -> list[str]:
    cells = {
        "external_id": f"V{n}", "item": "I1", "title": f"Variant {n}", "description": "d",
        "sku": f"SKU-{n}", "inventory_quantity": "3", "price": "9.5", "url": "https://shop/v",
    }  # fmt: skip
    return list((cells | changes).values())


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def problems(prepared: Any) -> dict[int, list[str]]:
    return {row.line: row.problems for row in prepared.invalid}


# ---- the header convention and conversions -------------------------------------------------------


def test_columns_become_typed_attributes_metadata_and_relationships(tmp_path: Path) -> None:
    header = [
        "external_id", "title", "description", "url", "price", "published", "images",
        "custom_metadata", "custom_metadata.color", "custom_metadata.weight:number",
        "custom_metadata.tags:json", "categories",
    ]  # fmt: skip
    row = [
        "SHIRT", "Shirt", "Blue", "https://shop/shirt", "12.50", "no",
        "https://i/1.png | https://i/2.png", '{"origin": "PT"}', "blue", "0.2", '["a", "b"]',
        "TOPS|$custom:::$default:::SALE",
    ]  # fmt: skip
    prepared = prepare(write_csv(tmp_path / "items.csv", header, [row]), "item", "create")
    assert prepared.invalid == []
    (only,) = prepared.rows
    assert only.external_id == "SHIRT"
    assert only.attributes == {
        "external_id": "SHIRT", "title": "Shirt", "description": "Blue",
        "url": "https://shop/shirt", "price": 12.5, "published": False,
        "images": ["https://i/1.png", "https://i/2.png"],
        "custom_metadata": {"origin": "PT", "color": "blue", "weight": 0.2, "tags": ["a", "b"]},
    }  # fmt: skip
    assert only.links == {"categories": ["TOPS", "SALE"]}
    body = orjson.loads(job_body(ITEM, "create", prepared.rows))
    (entry,) = body["data"]["attributes"]["items"]["data"]
    assert body["data"]["type"] == "catalog-item-bulk-create-job"
    assert entry["relationships"]["categories"]["data"] == [
        {"type": "catalog-category", "id": "$custom:::$default:::TOPS"},
        {"type": "catalog-category", "id": "$custom:::$default:::SALE"},
    ]
    assert "relationships" not in orjson.loads(job_body(ITEM, "delete", prepared.rows))["data"]


def test_empty_cells_are_left_out_and_integers_stay_integers(tmp_path: Path) -> None:
    header = [*VARIANT_HEADER, "image_full_url", "inventory_policy", "images"]
    path = write_csv(tmp_path / "v.csv", header, [[*variant_cells(1), "", "2", "  "]])
    (row,) = prepare(path, "variant", "create").rows
    assert "image_full_url" not in row.attributes and "images" not in row.attributes
    assert row.attributes["inventory_quantity"] == 3
    assert isinstance(row.attributes["inventory_quantity"], int)
    assert row.attributes["inventory_policy"] == 2
    assert row.links == {"item": ["I1"]}


def test_update_and_delete_bodies_keep_only_what_the_action_takes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "v.csv", VARIANT_HEADER, [variant_cells(1)])
    prepared = prepare(path, "variant", "upsert")
    assert prepared.invalid == []
    update = orjson.loads(job_body(VARIANT, "update", prepared.rows))["data"]
    (entry,) = update["attributes"]["variants"]["data"]
    assert entry["id"] == "$custom:::$default:::V1"
    assert "external_id" not in entry["attributes"] and "relationships" not in entry
    assert entry["attributes"]["price"] == 9.5
    delete = orjson.loads(job_body(VARIANT, "delete", prepared.rows))["data"]
    assert delete["attributes"]["variants"]["data"] == [
        {"type": "catalog-variant", "id": "$custom:::$default:::V1"}
    ]


def test_a_mapping_renames_columns_and_null_leaves_one_out(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "shop.csv",
        ["Handle", "Name", "Body", "Link", "Colour", "Internal"],
        [["H1", "Hat", "Warm", "https://shop/h1", "red", "x"]],
    )
    mapping = tmp_path / "mapping.json"
    columns = {
        "Handle": "external_id", "Name": "title", "Body": "description", "Link": "url",
        "Colour": "custom_metadata.colour", "Internal": None,
    }  # fmt: skip
    mapping.write_text(json.dumps(columns))
    (row,) = prepare(path, "item", "create", mapping_file=mapping).rows
    assert row.problems == []
    assert row.attributes == {
        "external_id": "H1", "title": "Hat", "description": "Warm", "url": "https://shop/h1",
        "custom_metadata": {"colour": "red"},
    }  # fmt: skip


def test_an_unknown_column_stops_the_load_before_any_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "v.csv", [*VARIANT_HEADER, "colour"], [[*variant_cells(1), "x"]])
    with pytest.raises(InputError, match=r"'colour'.*--mapping"):
        prepare(path, "variant", "create")
    with pytest.raises(InputError, match="sku"):  # items have no sku
        prepare(
            write_csv(tmp_path / "i.csv", ["external_id", "sku"], [["A", "B"]]), "item", "create"
        )


def test_jsonl_values_keep_their_json_types_and_text_is_converted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"external_id": "A", "title": "A", "description": "d", "url": "u", "price": 3,
             "images": ["x"], "custom_metadata": {"n": 1}, "custom_metadata.extra": True,
             "categories": ["C1"]},
            {"external_id": "B", "title": "B", "description": "d", "url": "u", "price": "4.5",
             "published": "true"},
        ],
    )  # fmt: skip
    first, second = prepare(path, "item", "create").rows
    assert first.attributes["custom_metadata"] == {"n": 1, "extra": True}
    assert first.links == {"categories": ["C1"]}
    assert (second.attributes["price"], second.attributes["published"]) == (4.5, True)


# ---- validation: every problem with its line --------------------------------------------------


def test_problems_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    rows = [variant_cells(n) for n in range(1, 8)]
    rows[1] = variant_cells(2, price="cheap")  # line 3: cannot be converted
    rows[3] = variant_cells(4, title="")  # line 5: a required attribute left out
    rows[4] = variant_cells(5, item="")  # line 6: no parent item
    rows[6] = variant_cells(7, external_id="")  # line 8
    path = write_csv(tmp_path / "v.csv", VARIANT_HEADER, rows)
    prepared = prepare(path, "variant", "create", chunk_size=3)
    found = problems(prepared)
    assert sorted(found) == [3, 5, 6, 8]
    assert found[3] == ["column 'price': 'cheap' is not a number"]
    assert found[5] == ["'title' is required (column 'title')"]
    assert "item" in found[6][0] and "relationships" in found[6][0]
    assert "external_id" in found[8][0]
    # Valid rows of a chunk with an invalid one are still valid.
    assert {row.line for row in prepared.rows if not row.problems} == {2, 4, 7}


def test_validation_applies_the_servers_rules_to_jsonl_values(tmp_path: Path) -> None:
    base = {"external_id": "A", "title": "A", "description": "d", "url": "u"}
    path = write_jsonl(
        tmp_path / "items.jsonl",
        [
            base,
            base | {"external_id": "B", "price": [1]},
            base | {"external_id": "C", "custom_metadata": {"deep": {"x": 1}}},
            "not an object",
            base | {"external_id": "D\u0000"},
        ],
    )
    path.write_text(path.read_text() + "{broken\n")
    found = problems(prepare(path, "item", "create"))
    assert sorted(found) == [2, 3, 4, 5, 6]
    assert found[2] == ["'price' must be a number (column 'price')"]
    assert "nested" in found[3][0]
    assert found[4] == ["not a JSON object"]
    assert "NUL" in found[5][0]
    assert "not valid JSON" in found[6][0]


def test_update_mode_needs_only_the_external_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["external_id", "price"], [["V1", "2"], ["", "3"]])
    assert sorted(problems(prepare(path, "variant", "update"))) == [3]
    assert sorted(problems(prepare(path, "variant", "delete"))) == [3]
    assert sorted(problems(prepare(path, "variant", "create"))) == [2, 3]


def test_csv_lines_count_physical_lines_and_skip_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        'external_id,title,description,url\nA,"two\nline title",d,u\n\nB,,d,u\nC,t,d,u,extra\n'
    )
    prepared = prepare(path, "item", "create")
    assert [row.line for row in prepared.rows] == [2, 5, 6]
    found = problems(prepared)
    assert sorted(found) == [5, 6]
    assert "5 cells" in found[6][0]


# ---- chunks ------------------------------------------------------------------------------------


def test_chunks_hold_at_most_100_rows_and_stay_under_the_byte_limit(tmp_path: Path) -> None:
    rows = [variant_cells(n) for n in range(250)]
    prepared = prepare(write_csv(tmp_path / "v.csv", VARIANT_HEADER, rows), "variant", "create")
    assert [len(chunk.rows) for chunk in prepared.chunks] == [100, 100, 50]
    assert prepared.chunks[0].key.startswith("2-101:")
    assert prepared.chunks[2].key.startswith("202-251:")
    small = make_chunks(VARIANT, "create", prepared.rows, limit=20_000)
    assert all(len(job_body(VARIANT, "create", c.rows)) <= 20_000 for c in small)
    assert sum(len(c.rows) for c in small) == 250 and len(small) > 3
    for chunk in small:  # each is a valid job for the server
        bodies.decode_job(VARIANT, "create", job_body(VARIANT, "create", chunk.rows))


def test_a_chunk_key_changes_with_its_rows_only(tmp_path: Path) -> None:
    rows = [variant_cells(n) for n in range(150)]
    first = prepare(write_csv(tmp_path / "a.csv", VARIANT_HEADER, rows), "variant", "create")
    rows[120] = variant_cells(120, price="1")
    second = prepare(write_csv(tmp_path / "b.csv", VARIANT_HEADER, rows), "variant", "create")
    assert first.chunks[0].key == second.chunks[0].key
    assert first.chunks[1].key != second.chunks[1].key


def test_a_row_too_big_for_any_request_is_a_problem(tmp_path: Path) -> None:
    rows = [variant_cells(1), variant_cells(2, description="x" * 50_000), variant_cells(3)]
    path = write_csv(tmp_path / "v.csv", VARIANT_HEADER, rows)
    prepared = prepare(path, "variant", "create")
    assert prepared.invalid == []
    chunks = make_chunks(VARIANT, "create", prepared.rows, limit=40_000)
    assert [[row.line for row in c.valid()] for c in chunks] == [[2, 4]]
    assert "40000 bytes" in prepared.rows[1].problems[0]


def test_pointers_map_to_entries_and_attributes() -> None:
    assert locate("/data/attributes/variants/data/3/attributes/price", VARIANT) == (3, "price")
    assert locate("/data/attributes/variants/7", VARIANT) == (7, "")
    assert locate("/data/attributes/variants/data/0/relationships", VARIANT) == (0, "item")
    assert locate("/data/attributes/items/data/2/attributes/a~1b", ITEM) == (2, "a/b")
    assert locate("/data", VARIANT) == (None, "")
    assert locate(None, VARIANT) == (None, "")


# ---- the failed file, the state file, rate-limit headers ----------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_the_failed_file_loads_again_as_it_is(tmp_path: Path, suffix: str) -> None:
    rows = [variant_cells(n) for n in range(3)]
    if suffix == ".csv":
        path = write_csv(tmp_path / f"v{suffix}", VARIANT_HEADER, rows)
    else:
        path = write_jsonl(
            tmp_path / f"v{suffix}", [dict(zip(VARIANT_HEADER, r, strict=True)) for r in rows]
        )
    prepared = prepare(path, "variant", "create")
    failed = failed_path(path)
    assert failed.name == f"v.failed{suffix}"
    write_failed(failed, prepared.fmt, prepared.columns, [(prepared.rows[1], "not_found", "gone")])
    again = prepare(failed, "variant", "create")
    assert again.invalid == []
    (row,) = again.rows
    assert row.attributes == prepared.rows[1].attributes
    columns, records = read_records(failed, prepared.fmt)
    assert columns[-2:] == list(ERROR_COLUMNS)
    assert (records[0].values["error_code"], records[0].values["error_detail"]) == (
        "not_found", "gone",
    )  # fmt: skip
    # A failed file of a failed file keeps one pair of error columns.
    write_failed(tmp_path / f"again{suffix}", again.fmt, columns, [(row, "x", "y")])
    assert read_records(tmp_path / f"again{suffix}", again.fmt)[0].count("error_code") == 1


def test_the_state_file_is_written_whole_and_refuses_another_load(tmp_path: Path) -> None:
    path = tmp_path / "v.csv.state.json"
    header = {"type": "variant", "mode": "create", "url": "http://x"}
    state = State.open(path, header, fresh=False)
    state.save()
    assert orjson.loads(path.read_bytes())["mode"] == "create"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    with pytest.raises(InputError, match="--fresh"):
        State.open(path, header | {"mode": "update"}, fresh=False)
    assert State.open(path, header | {"mode": "update"}, fresh=True).data["mode"] == "update"
    path.write_text("{")
    with pytest.raises(InputError, match="Cannot read the state file"):
        State.open(path, header, fresh=False)


def test_rate_limit_headers_are_read() -> None:
    assert rate_limit_state({"ratelimit-remaining": "0", "ratelimit-reset": "12"}) == (0, 12.0)
    assert rate_limit_state({"ratelimit": "limit=75, remaining=3, reset=1"}) == (3, 1.0)
    assert rate_limit_state({}) == (None, None)


# ---- the command, without a server --------------------------------------------------------------


def test_dry_run_reports_lines_and_exits_1_then_0(tmp_path: Path) -> None:
    runner = CliRunner()
    rows = [variant_cells(1), variant_cells(2, price="abc")]
    path = write_csv(tmp_path / "v.csv", VARIANT_HEADER, rows)
    result = runner.invoke(app, ["load", str(path), "--type", "variant", "--dry-run"])
    assert result.exit_code == 1, result.output
    assert "line 3:" in result.stderr and "'abc' is not a number" in result.stderr
    assert "1 valid, 1 invalid" in result.stdout
    write_csv(path, VARIANT_HEADER, rows[:1])
    result = runner.invoke(app, ["load", str(path), "--type", "variant", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1 variant create job(s) would be sent" in result.stdout
    assert not (tmp_path / "v.csv.state.json").exists()


def test_invalid_rows_stop_a_load_before_it_needs_a_server(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "v.csv", VARIANT_HEADER, [variant_cells(1, price="x")])
    result = CliRunner().invoke(
        app, ["load", str(path), "--type", "variant", "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 1
    assert "nothing sent" in result.stderr and "--skip-invalid" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    path = write_csv(tmp_path / "v.txt", VARIANT_HEADER, [variant_cells(1)])
    result = runner.invoke(app, ["load", str(path), "--type", "variant", "--dry-run"])
    assert result.exit_code == 2 and "--format" in result.stderr
    result = runner.invoke(app, ["load", str(path), "--type", "widget", "--format", "csv"])
    assert result.exit_code == 2 and "--type" in result.stderr
    result = runner.invoke(
        app, ["load", str(path), "--type", "variant", "--format", "csv", "--mode", "merge"]
    )
    assert result.exit_code == 2 and "--mode" in result.stderr


def test_a_429_is_waited_out_as_retry_after_says_and_the_post_sent_once_more() -> None:
    """The e2e test meets the server's limiter only when it wins no slot: here a server
    refuses the first POST with 429 and ``Retry-After: 1``, then accepts."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts: list[float] = []

    class Refuses(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(time.monotonic())
            refused = len(posts) == 1
            body = orjson.dumps(
                {"errors": [{"status": 429, "code": "throttled", "title": "Too many"}]}
                if refused
                else {"data": {"type": "catalog-item-bulk-create-job", "id": "J1"}}
            )
            self.send_response(429 if refused else 202)
            if refused:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Waits:
        reasons: list[str] = []

        def waiting(self, left: float, reason: str) -> None:
            if reason:
                self.reasons.append(reason)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ui = Waits()
    client = Client(f"http://127.0.0.1:{server.server_port}", "pk_test", ui, lambda: False)  # type: ignore[arg-type]
    try:
        answer = client.request("POST", "/api/catalog-item-bulk-create-jobs", b"{}", op="create")
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert answer.status == 202
    assert len(posts) == 2
    assert posts[1] - posts[0] >= 0.95  # Retry-After: 1
    assert set(ui.reasons) == {"rate limit (429)"}
