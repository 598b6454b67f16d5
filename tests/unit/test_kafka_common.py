"""Kafka connectors without a broker: decoding to Arrow, event times, option checks, registry entries
and the exactly-once graph checks (build and preflight)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow as pa
import pytest
import yaml
from apache_beam.transforms.display import DisplayData
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.build import build_pipeline
from beam_etl.io import _kafka_common as kc
from beam_etl.io._kafka_common import DecodeOptions, RawMessage, decode_messages, event_times_ms
from beam_etl.io.kafka import ReadFromKafka, ReadFromKafkaConfig, WriteToKafka, WriteToKafkaConfig
from beam_etl.ops import guarantees
from beam_etl.ops.secrets import redact
from beam_etl.runners import PreflightError, preflight
from beam_etl.runners.capabilities import BEAM_VERSION
from beam_etl.spec import TemplateError, build_spec

BROKER = "127.0.0.1:1"  # never contacted: nothing here connects
TS = 1_700_000_000_000
UTC = dt.UTC


def msg(offset: int, value: bytes | None, key: bytes | None = b"k", ts: int | None = TS,
        headers: list | None = None, partition: int = 0) -> RawMessage:
    return RawMessage("orders", partition, offset, ts, key, value, headers)


def rejects(decoded: kc.Decoded) -> list[tuple[int, str, str, str]]:
    return [(r.message.offset, r.error_type, r.error, r.exception) for r in decoded.rejected]


# ----------------------------------------------------------------------------- decode_messages: JSON


def test_json_fast_path_decodes_objects_into_typed_columns():
    decoded = decode_messages([msg(0, b'{"id": 1, "name": "a", "amount": 1.5}'),
                               msg(1, b'{"id": 2, "name": "b", "amount": 2}')], DecodeOptions())
    assert decoded.rejected == []
    assert decoded.batch.schema.types == [pa.int64(), pa.string(), pa.float64()]
    assert decoded.batch.to_pylist() == [{"id": 1, "name": "a", "amount": 1.5}, {"id": 2, "name": "b", "amount": 2.0}]
    assert [m.offset for m in decoded.messages] == [0, 1]


def test_json_slow_path_keeps_good_values_and_rejects_the_rest_with_reasons():
    messages = [
        msg(0, b'{"id": 1}'),
        msg(1, b'{"id":\n 2}'),  # a newline inside the value: not for the one-shot NDJSON parse
        msg(2, b"[1, 2]"),
        msg(3, b'"text"'),
        msg(4, b"{not json"),
        msg(5, None),  # a tombstone
        msg(6, b""),
        msg(7, b'{"id": 3}'),
    ]
    decoded = decode_messages(messages, DecodeOptions(metadata=("offset",)))
    assert decoded.batch.to_pylist() == [{"id": 1, "kafka_offset": 0}, {"id": 2, "kafka_offset": 1},
                                         {"id": 3, "kafka_offset": 7}]
    assert [m.offset for m in decoded.messages] == [0, 1, 7]
    found = {offset: (kind, error, exception) for offset, kind, error, exception in rejects(decoded)}
    assert set(found) == {2, 3, 4, 5, 6}
    assert found[2] == ("parse", "the value is JSON list, not an object", "ValueError")
    assert found[3] == ("parse", "the value is JSON str, not an object", "ValueError")
    assert found[4][0] == "parse" and found[4][1].startswith("the value is not valid JSON: Expecting property name")
    assert found[4][2] == "JSONDecodeError"
    assert found[5][0] == "validation" and "tombstone" in found[5][1]
    assert found[6][0] == "parse" and "not valid JSON" in found[6][1]


def test_rejected_record_holds_where_and_the_raw_text():
    decoded = decode_messages([msg(41, b"{broken", key=b"order-7", partition=2)], DecodeOptions())
    [bad] = decoded.rejected
    assert decoded.batch is None and decoded.messages == []
    assert bad.message.where == "orders/2/41"
    assert bad.record() == {"topic": "orders", "partition": 2, "offset": 41, "key": "order-7", "value": "{broken"}


def test_invalid_utf8_value_in_json_slow_path_is_a_parse_error():
    # a newline elsewhere in the poll sends every value through json.loads
    decoded = decode_messages([msg(0, b'{"a": "\xff"}'), msg(1, b'{"a":\n"ok"}')], DecodeOptions())
    assert decoded.batch.to_pylist() == [{"a": "ok"}]
    [(offset, kind, error, exception)] = rejects(decoded)
    assert (offset, kind, exception) == (0, "parse", "UnicodeDecodeError")
    assert "utf-8" in error.lower()
    assert decoded.rejected[0].record()["value"] == "hex:" + b'{"a": "\xff"}'.hex()


def test_invalid_utf8_value_in_json_fast_path_is_a_parse_error():
    decoded = decode_messages([msg(0, b'{"a": "\xff"}'), msg(1, b'{"a": "ok"}')], DecodeOptions())
    assert [(o, k) for o, k, _, _ in rejects(decoded)] == [(0, "parse")]
    assert "utf-8" in decoded.rejected[0].error.lower()
    decoded.batch.validate(full=True)
    assert decoded.batch.to_pylist() == [{"a": "ok"}]


@pytest.mark.parametrize("value", [b'{"a": 1}{"a": 2}', b'{"a": 1} {"a": 2}', b'{"a": 1}\r{"a": 2}'])
@pytest.mark.parametrize("metadata", [(), ("offset",)], ids=["no-metadata", "offset"])
def test_two_json_objects_in_one_value_are_rejected(value, metadata):
    decoded = decode_messages([msg(0, value), msg(1, b'{"a": 3}')], DecodeOptions(metadata=metadata))
    assert [(o, k) for o, k, _, _ in rejects(decoded)] == [(0, "parse")]
    assert decoded.batch.num_rows == 1 and decoded.batch.column("a").to_pylist() == [3]
    assert [m.offset for m in decoded.messages] == [1]


def test_fields_that_conflict_across_messages_do_not_fail_the_poll():
    decoded = decode_messages([msg(0, b'{"a": 1}'), msg(1, b'{"a": "x"}')], DecodeOptions())
    assert decoded.rejected == [] and decoded.batch.num_rows == 2


def test_empty_objects_keep_their_rows():
    decoded = decode_messages([msg(0, b"{}"), msg(1, b'{"a": 1}')], DecodeOptions(metadata=("offset",)))
    assert decoded.batch.to_pylist() == [{"a": None, "kafka_offset": 0}, {"a": 1, "kafka_offset": 1}]


# ----------------------------------------------------------------------------- decode_messages: text, bytes, keys


def test_text_values_and_invalid_utf8_value_and_key():
    decoded = decode_messages([msg(0, b"hello"), msg(1, b"\xff\xfe"), msg(2, b"fine", key=b"\xff"),
                               msg(3, None)], DecodeOptions("text", metadata=("key", "offset")))
    assert decoded.batch.to_pylist() == [{"value": "hello", "kafka_key": "k", "kafka_offset": 0},
                                         {"value": None, "kafka_key": "k", "kafka_offset": 3}]
    assert [m.offset for m in decoded.messages] == [0, 3]
    found = {o: (k, e, x) for o, k, e, x in rejects(decoded)}
    assert found[1] == ("parse", "the value is not valid UTF-8 (invalid start byte at byte 0)", "UnicodeDecodeError")
    assert found[2] == ("parse", "the key is not valid UTF-8 (invalid start byte at byte 0)", "UnicodeDecodeError")
    records = {r.message.offset: r.record() for r in decoded.rejected}
    assert records[1]["value"] == "hex:fffe" and records[2]["key"] == "hex:ff" and records[2]["value"] == "fine"


def test_invalid_utf8_key_after_a_good_json_value_drops_only_that_row():
    decoded = decode_messages([msg(0, b'{"a": 1}'), msg(1, b'{"a": 2}', key=b"\xc3"), msg(2, b'{"a": 3}', key=None)],
                              DecodeOptions(metadata=("key",)))
    assert decoded.batch.to_pylist() == [{"a": 1, "kafka_key": "k"}, {"a": 3, "kafka_key": None}]
    assert [m.offset for m in decoded.messages] == [0, 2]
    assert [(o, k) for o, k, _, _ in rejects(decoded)] == [(1, "parse")]
    assert "key is not valid UTF-8" in decoded.rejected[0].error


def test_bytes_values_and_keys_pass_through_untouched():
    decoded = decode_messages([msg(0, b"\xff\x00", key=b"\xfe"), msg(1, None, key=None)],
                              DecodeOptions("bytes", key_format="bytes", metadata=("key",)))
    assert decoded.rejected == []
    assert decoded.batch.schema == pa.schema([("value", pa.binary()), ("kafka_key", pa.binary())])
    assert decoded.batch.to_pylist() == [{"value": b"\xff\x00", "kafka_key": b"\xfe"},
                                         {"value": None, "kafka_key": None}]


def test_metadata_columns_have_arrow_types():
    headers = [("trace", b"t-1"), ("empty", None)]
    decoded = decode_messages([msg(5, b'{"a": 1}', key=b"k1", headers=headers, partition=3),
                               msg(6, b'{"a": 2}', key=None, ts=None, partition=3)],
                              DecodeOptions(metadata=kc.METADATA))
    schema = decoded.batch.schema
    assert schema.field("kafka_topic").type == pa.string()
    assert schema.field("kafka_partition").type == pa.int32()
    assert schema.field("kafka_offset").type == pa.int64()
    assert schema.field("kafka_timestamp").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("kafka_key").type == pa.string()
    assert schema.field("kafka_headers").type == pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
    assert schema.names == ["a", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key",
                            "kafka_headers"]
    first, second = decoded.batch.to_pylist()
    assert first["kafka_topic"] == "orders" and first["kafka_partition"] == 3 and first["kafka_offset"] == 5
    assert first["kafka_timestamp"] == dt.datetime.fromtimestamp(TS / 1000, UTC)
    assert first["kafka_key"] == "k1"
    assert first["kafka_headers"] == [{"key": "trace", "value": b"t-1"}, {"key": "empty", "value": None}]
    assert second["kafka_key"] is None and second["kafka_timestamp"] is None and second["kafka_headers"] == []


def test_metadata_column_replaces_a_value_field_of_the_same_name():
    decoded = decode_messages([msg(9, b'{"kafka_offset": "mine", "a": 1}')], DecodeOptions(metadata=("offset",)))
    assert decoded.batch.to_pylist() == [{"a": 1, "kafka_offset": 9}]


def test_columns_projects_and_orders_fields():
    decoded = decode_messages([msg(0, b'{"a": 1, "b": "x", "c": 3}'), msg(1, b'{"b": "y"}')],
                              DecodeOptions(columns=("b", "a", "missing"), metadata=("offset",)))
    assert decoded.batch.schema.names == ["b", "a", "missing", "kafka_offset"]
    assert decoded.batch.to_pylist() == [{"b": "x", "a": 1, "missing": None, "kafka_offset": 0},
                                         {"b": "y", "a": None, "missing": None, "kafka_offset": 1}]


def test_schema_casts_and_rejects_rows_that_do_not_cast_naming_the_field():
    opts = DecodeOptions(types=kc.check_types({"amount": "int", "day": "date"}), metadata=("offset",))
    decoded = decode_messages([msg(0, b'{"amount": "12", "day": "2024-01-02"}'),
                               msg(1, b'{"amount": "twelve", "day": "2024-01-03"}'),
                               msg(2, b'{"amount": "7", "day": "someday"}')], opts)
    assert decoded.batch.schema.field("amount").type == pa.int64()
    assert decoded.batch.schema.field("day").type == pa.date32()
    assert decoded.batch.to_pylist() == [{"amount": 12, "day": dt.date(2024, 1, 2), "kafka_offset": 0}]
    assert [m.offset for m in decoded.messages] == [0]
    found = {o: (k, e) for o, k, e, _ in rejects(decoded)}
    assert found[1][0] == "type" and "field 'amount'" in found[1][1] and "'twelve'" in found[1][1]
    assert found[2][0] == "type" and "field 'day'" in found[2][1] and "'someday'" in found[2][1]


def test_a_row_with_two_bad_fields_is_rejected_once():
    opts = DecodeOptions(types=kc.check_types({"a": "int", "b": "int"}))
    decoded = decode_messages([msg(0, b'{"a": "x", "b": "y"}'), msg(1, b'{"a": "1", "b": "2"}')], opts)
    assert [o for o, *_ in rejects(decoded)] == [0]
    assert decoded.batch.to_pylist() == [{"a": 1, "b": 2}]


def test_every_row_rejected_gives_no_batch():
    decoded = decode_messages([msg(0, b"nope"), msg(1, None)], DecodeOptions())
    assert decoded.batch is None and decoded.messages == [] and len(decoded.rejected) == 2


# ----------------------------------------------------------------------------- event_times_ms


def test_event_time_is_the_record_timestamp_without_a_field():
    batch = pa.RecordBatch.from_pylist([{"a": 1}, {"a": 2}])
    assert event_times_ms(batch, [msg(0, b"", ts=TS), msg(1, b"", ts=None)], None) == [TS, None]


@pytest.mark.parametrize(("values", "expected"), [
    ([1_704_164_645_000, None], [1_704_164_645_000, None]),  # epoch milliseconds
    (["2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00"], [1_704_164_645_000, 1_704_164_645_000]),
    (["2024-01-02T03:04:05.250Z", "2024-01-02T03:04:05"], [1_704_164_645_250, 1_704_164_645_000]),  # naive: UTC
    (["not a time", ""], [None, None]),
    ([dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None], [1_704_164_645_000, None]),
    ([dt.date(2024, 1, 2), None], [1_704_153_600_000, None]),
    ([True, False], [None, None]),  # a type that is no time
], ids=["int-ms", "iso-z-and-offset", "iso-fraction-and-naive", "unparseable", "timestamp", "date", "bool"])
def test_event_time_from_a_field(values, expected):
    batch = pa.RecordBatch.from_pydict({"when": values})
    messages = [msg(i, b"") for i in range(len(values))]
    assert event_times_ms(batch, messages, "when") == expected


def test_event_time_from_a_missing_field_is_none():
    batch = pa.RecordBatch.from_pylist([{"a": 1}])
    assert event_times_ms(batch, [msg(0, b"")], "when") == [None]


def test_event_time_from_decoded_json_iso_text():
    decoded = decode_messages([msg(0, b'{"when": "2024-01-02T03:04:05Z"}'), msg(1, b'{"when": "later"}')],
                              DecodeOptions())
    assert event_times_ms(decoded.batch, decoded.messages, "when") == [1_704_164_645_000, None]


# ----------------------------------------------------------------------------- option checks


@pytest.mark.parametrize(("value", "seconds"), [("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0),
                                                (3, 3.0), (2.5, 2.5), (" 1.5s ", 1.5), ("7", 7.0), (0, 0.0)])
def test_parse_seconds(value, seconds):
    assert kc.parse_seconds(value, "poll_timeout") == seconds


@pytest.mark.parametrize(("value", "message"), [
    (-1, "poll_timeout: expected a duration >= 0, got -1"),
    (True, "poll_timeout: expected a duration like '10s' or '5m', got True"),
    ("ten", "poll_timeout: expected a duration like '500ms', '10s', '5m' or '1h', got 'ten'"),
    ("5d", "got '5d'"),
])
def test_parse_seconds_errors_name_field_and_value(value, message):
    with pytest.raises(ValueError) as err:
        kc.parse_seconds(value, "poll_timeout")
    assert message in str(err.value)


@pytest.mark.parametrize(("value", "message"), [
    ("", "bootstrap_servers: expected 'host:port[,host:port...]', got ''"),
    (None, "got None"),
    ("broker", "bootstrap_servers: 'broker' is not host:port (in 'broker')"),
    ("broker:abc", "'broker:abc' is not host:port"),
    (":9092", "':9092' is not host:port"),
    ("a:1,b", "'b' is not host:port (in 'a:1,b')"),
])
def test_check_bootstrap_errors(value, message):
    with pytest.raises(ValueError) as err:
        kc.check_bootstrap(value)
    assert message in str(err.value)


def test_check_bootstrap_accepts_lists():
    assert kc.check_bootstrap(" a:1, b:2 ") == "a:1, b:2"


@pytest.mark.parametrize(("value", "message"), [
    ([], "topics: expected a topic name or a non-empty list of names, got []"),
    ("a b", "topics: 'a b' is not a valid Kafka topic name"),
    ("", "topics: '' is not a valid Kafka topic name"),
    (["ok", 3], "topics: 3 is not a valid Kafka topic name"),
    (["a", "a"], "topics: ['a', 'a'] names a topic twice"),
    ("x" * 250, "is not a valid Kafka topic name"),
])
def test_check_topics_errors(value, message):
    with pytest.raises(ValueError) as err:
        kc.check_topics(value)
    assert message in str(err.value)


def test_check_topics_returns_a_tuple():
    assert kc.check_topics("orders") == ("orders",) and kc.check_topics(["a.b", "c_d-1"]) == ("a.b", "c_d-1")


@pytest.mark.parametrize("key", kc._RESERVED_CONSUMER)
def test_reserved_consumer_settings_are_refused(key):
    with pytest.raises(ValueError, match=rf"^consumer_config\.{key}: set by the connector"):
        kc.client_settings({key: "x"}, kc._RESERVED_CONSUMER, "consumer_config")


@pytest.mark.parametrize("key", kc._RESERVED_PRODUCER)
def test_reserved_producer_settings_are_refused(key):
    with pytest.raises(ValueError, match=rf"^producer_config\.{key}: set by the connector"):
        kc.client_settings({key: "x"}, kc._RESERVED_PRODUCER, "producer_config")


def test_client_settings_become_strings_and_credentials_become_secrets():
    settings = kc.client_settings({"security.protocol": "SASL_SSL", "sasl.password": "kafka-canary-pw-1",
                                   "ssl.key.password": "kafka-canary-pw-2", "sasl.oauthbearer.config": "scope=x",
                                   "fetch.min.bytes": 10, "check.crcs": True}, kc._RESERVED_CONSUMER,
                                  "consumer_config")
    assert settings["fetch.min.bytes"] == "10" and settings["check.crcs"] == "true"
    assert redact("got kafka-canary-pw-1 and kafka-canary-pw-2") == "got *** and ***"
    shown = kc.displayable_settings(settings)
    assert shown == {"security.protocol": "SASL_SSL", "sasl.password": "***", "ssl.key.password": "***",
                     "sasl.oauthbearer.config": "***", "fetch.min.bytes": "10", "check.crcs": "true"}


def test_client_settings_key_must_be_a_name():
    with pytest.raises(ValueError, match="consumer_config: keys must be librdkafka setting names, got ''"):
        kc.client_settings({"": 1}, kc._RESERVED_CONSUMER, "consumer_config")


def test_check_metadata():
    assert kc.check_metadata(None) == ()
    assert kc.check_metadata(["key", "key", "offset"]) == ("key", "offset")
    with pytest.raises(ValueError, match="metadata: 'nope' is not one of topic, partition"):
        kc.check_metadata(["key", "nope"])
    with pytest.raises(ValueError, match="metadata: expected a list"):
        kc.check_metadata("key")


# ----------------------------------------------------------------------------- ReadFromKafka / WriteToKafka


def read(**options) -> ReadFromKafka:
    return ReadFromKafka(**{"bootstrap_servers": BROKER, "topics": "orders", **options})


@pytest.mark.parametrize(("options", "message"), [
    ({}, "group_id: start 'committed' reads the group's committed offsets"),
    ({"start": "timestamp"}, "start_timestamp: required with start: timestamp"),
    ({"start": "timestamp", "start_timestamp": "yesterday"},
     "start_timestamp: 'yesterday' is neither ISO-8601 text nor epoch milliseconds"),
    ({"start": "earliest", "start_timestamp": 5}, "start_timestamp: only used with start: timestamp"),
    ({"start": "sometime"}, "start: 'sometime' is not one of committed, earliest, latest, timestamp"),
    ({"start": "earliest", "stop": "soon"}, "stop: 'soon' is not one of never, latest"),
    ({"start": "earliest", "value_format": "avro"}, "value_format: 'avro' is not one of json, text, bytes"),
    ({"start": "earliest", "value_format": "text", "event_time": "ts"}, "event_time: a value field needs value_format"),
    ({"start": "earliest", "exactly_once": True}, "exactly_once: needs group_id and commit_offsets: true"),
    ({"group_id": "g", "exactly_once": True, "commit_offsets": False}, "exactly_once: needs group_id"),
    ({"start": "earliest", "columns": []}, "columns: expected a non-empty list of field names"),
    ({"start": "earliest", "batch_rows": 0}, "batch_rows: expected a whole number > 0, got 0"),
    ({"start": "earliest", "schema": {"a": "intx"}}, "schema.a: type 'intx' is not one of"),
    ({"start": "earliest", "poll_timeout": "soon"}, "poll_timeout: expected a duration"),
    ({"start": "earliest", "consumer_config": {"enable.auto.commit": True}},
     "consumer_config.enable.auto.commit: set by the connector"),
    ({"start": "earliest", "bootstrap_servers": "nohost"}, "bootstrap_servers: 'nohost' is not host:port"),
])
def test_read_options_are_checked_at_construction(options, message):
    with pytest.raises(ValueError) as err:
        read(**options)
    assert message in str(err.value)


@pytest.mark.parametrize("when", ["2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "2024-01-02T03:04:05",
                                  1_704_164_645_000, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)])
def test_start_timestamp_accepts_iso_text_and_epoch_ms(when):
    assert read(start="timestamp", start_timestamp=when).options.start_timestamp_ms == 1_704_164_645_000


def test_read_defaults_and_commit_without_group():
    transform = read(start="earliest", stop="latest")
    assert transform.bounded and transform.options.commit_offsets is False  # no group: nothing to commit to
    assert transform.options.decode.metadata == ("key", "partition", "offset", "timestamp")
    assert read(group_id="g", stop="never").bounded is False
    assert read(group_id="g").options.commit_offsets is True


def test_read_display_data_hides_consumer_credentials():
    transform = read(group_id="g", consumer_config={"sasl.password": "kafka-canary-pw-3",
                                                    "security.protocol": "SASL_PLAINTEXT"})
    data = transform.display_data()
    assert data["consumer_config"] == "{'sasl.password': '***', 'security.protocol': 'SASL_PLAINTEXT'}"
    assert "kafka-canary-pw-3" not in repr(data)
    items = DisplayData.create_from(transform).items
    assert items and all("kafka-canary-pw-3" not in repr(item.value) for item in items)


@pytest.mark.parametrize(("options", "message"), [
    ({"transactional": True, "transaction_timeout": "5s", "flush_timeout": "10s"},
     "transaction_timeout (5s) must be at least flush_timeout (10s)"),
    ({"value_format": "text", "value_columns": ["a"]}, "value_columns: only for value_format json"),
    ({"value_field": "a"}, "value_field: only for value_format text or bytes"),
    ({"key": "id"}, "key: expected a non-empty list of field names, got 'id'"),
    ({"key": []}, "key: expected a non-empty list of field names, got []"),
    ({"compression": "brotli"}, "compression: 'brotli' is not one of none, gzip, snappy, lz4, zstd"),
    ({"topic": "two words"}, "topics: 'two words' is not a valid Kafka topic name"),
    ({"producer_config": {"transactional.id": "x"}}, "producer_config.transactional.id: set by the connector"),
    ({"flush_timeout": "-1s"}, "flush_timeout: expected a duration"),
])
def test_write_options_are_checked_at_construction(options, message):
    with pytest.raises(ValueError) as err:
        WriteToKafka(**{"bootstrap_servers": BROKER, "topic": "out", **options})
    assert message in str(err.value)


def test_write_transactional_with_a_long_enough_timeout_is_accepted():
    transform = WriteToKafka(BROKER, "out", transactional=True, flush_timeout="5s", transaction_timeout="5s")
    assert transform.options.transactional and transform.options.transaction_timeout_s == 5.0


def test_write_display_data_hides_producer_credentials():
    transform = WriteToKafka(BROKER, "out", key=["id"], producer_config={"sasl.password": "kafka-canary-pw-4"})
    data = transform.display_data()
    assert data["producer_config"] == "{'sasl.password': '***'}" and data["key"] == "id"
    items = DisplayData.create_from(transform).items
    assert all("kafka-canary-pw-4" not in repr(item.value) for item in items)
    config = transform.options.producer_config("tx-1")
    assert config["transactional.id"] == "tx-1" and config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["sasl.password"] == "kafka-canary-pw-4"  # only the client gets it


# ----------------------------------------------------------------------------- registry


def test_read_config_accepts_schema_alias_and_passes_it_on(run_context):
    config = ReadFromKafkaConfig(bootstrap_servers=BROKER, topics=["a", "b"], start="earliest", stop="latest",
                                 schema={"amount": "float"})
    assert config.kwargs()["schema"] == {"amount": "float"} and "schema_" not in config.kwargs()
    assert ReadFromKafkaConfig(bootstrap_servers=BROKER, topics="a", start="earliest",
                               schema_={"x": "int"}).kwargs()["schema"] == {"x": "int"}  # populate_by_name
    entry = registry.lookup("ReadFromKafka")
    transform = entry.factory(config, registry.BuildContext("read", run_context))
    assert isinstance(transform, ReadFromKafka)
    assert transform.options.topics == ("a", "b") and transform.options.decode.types == {"amount": pa.float64()}
    assert transform._step_name == "read"


def test_read_config_errors_are_validation_errors():
    with pytest.raises(ValidationError, match="schema.a: type 'intx'"):
        ReadFromKafkaConfig(bootstrap_servers=BROKER, topics="t", start="earliest", schema={"a": "intx"})
    with pytest.raises(ValidationError, match="bogus"):
        ReadFromKafkaConfig(bootstrap_servers=BROKER, topics="t", start="earliest", bogus=1)
    with pytest.raises(ValidationError, match="group_id: start 'committed'"):
        ReadFromKafkaConfig(bootstrap_servers=BROKER, topics="t")


def test_registry_features_of_read():
    entry = registry.lookup("ReadFromKafka")
    assert entry.kind == "source" and entry.supports_streaming(None)

    def features(**options):
        return entry.features(ReadFromKafkaConfig(bootstrap_servers=BROKER, topics="t", **options))

    assert features(group_id="g", stop="never") == {"streaming", "unbounded_sdf", "bundle_finalization"}
    assert features(start="earliest", stop="latest") == frozenset()
    assert features(group_id="g", stop="latest") == {"bundle_finalization"}
    assert features(group_id="g", stop="latest", commit_offsets=False) == frozenset()
    assert features(start="earliest", stop="never") == {"streaming", "unbounded_sdf"}


def test_registry_write_is_idempotent_only_when_transactional():
    entry = registry.lookup("WriteToKafka")
    assert entry.kind == "sink" and entry.supports_streaming(None)
    assert entry.writes_idempotently(WriteToKafkaConfig(bootstrap_servers=BROKER, topic="t", transactional=True))
    assert not entry.writes_idempotently(WriteToKafkaConfig(bootstrap_servers=BROKER, topic="t"))
    with pytest.raises(ValidationError, match="value_field: only for value_format text or bytes"):
        WriteToKafkaConfig(bootstrap_servers=BROKER, topic="t", value_field="x")


# ----------------------------------------------------------------------------- exactly-once graph checks

SOURCE = """
name: eo
sources:
  - name: read
    type: ReadFromKafka
    config: {bootstrap_servers: "127.0.0.1:1", topics: orders, group_id: g, exactly_once: true}
"""
NULLS = """
steps:
  - name: has_id
    type: NullRemover
    input: read
    config: {drop_rows: {fields: [id]}}
"""
GROUP = """
steps:
  - name: per_id
    type: GroupByAggregate
    input: read
    config: {keys: [id], aggregations: {n: {op: count}}}
"""
PG = "{type: WriteToPostgres, config: {host: h, user: u, password: pw, database: d, table: t, %s}}"
SINKS = {
    "pg_insert": PG % "mode: insert",
    "pg_upsert": PG % "mode: upsert, key: [id]",
    "kafka_plain": "{type: WriteToKafka, config: {bootstrap_servers: '127.0.0.1:1', topic: out, transactional: false}}",
    "kafka_tx": "{type: WriteToKafka, config: {bootstrap_servers: '127.0.0.1:1', topic: out, transactional: true}}",
    "parquet": "{type: WriteToParquet, config: {path: '{{ run_dir }}/out'}}",
}


def spec_of(sink: str, steps: str = NULLS, exactly_once: bool = True):
    sink_input = yaml.safe_load(steps)["steps"][0]["name"]
    sink_doc = yaml.safe_load(SINKS[sink])
    text = SOURCE.replace("exactly_once: true", f"exactly_once: {str(exactly_once).lower()}") + steps
    document = yaml.safe_load(text)
    document["sinks"] = [{"name": "out", "input": sink_input, **sink_doc}]
    return build_spec(document, [], {"run_dir": "/tmp/r", "run_id": "r"})


@pytest.mark.parametrize(("sink", "bad"), [("pg_insert", True), ("pg_upsert", False), ("kafka_plain", True),
                                           ("kafka_tx", False), ("parquet", True)])
def test_check_exactly_once_names_sinks_that_would_write_twice(sink, bad):
    spec, configs = spec_of(sink)
    problems = guarantees.check_exactly_once(spec, configs)
    if not bad:
        assert problems == []
        return
    [problem] = problems
    sink_type = spec.sinks[0].type
    assert f"source 'read' asks for exactly_once, but sink 'out' ({sink_type})" in problem
    assert "mode: upsert" in problem and "transactional: true" in problem


def test_no_exactly_once_no_problem():
    spec, configs = spec_of("pg_insert", exactly_once=False)
    assert guarantees.exactly_once_sources(spec, configs) == []
    assert guarantees.check_exactly_once(spec, configs) == []


def test_build_refuses_a_graph_that_cannot_keep_exactly_once(run_context):
    spec, configs = spec_of("parquet")
    with pytest.raises(TemplateError) as err:
        build_pipeline(beam.Pipeline(), spec, configs, run_context)
    message = str(err.value)
    assert "the exactly-once guarantee cannot hold" in message and "sink 'out' (WriteToParquet)" in message


def test_regrouping_steps_are_named():
    spec, configs = spec_of("pg_upsert", steps=GROUP)
    assert guarantees.check_exactly_once(spec, configs) == []
    assert guarantees.regrouping_steps(spec, configs) == {"read": ["per_id (GroupByAggregate)"]}
    spec, configs = spec_of("pg_upsert")
    assert guarantees.regrouping_steps(spec, configs) == {}


@pytest.fixture
def fake_prism(tmp_path, monkeypatch):
    """A runners folder holding a (fake) Prism binary for this Beam version, as test_preflight.py does."""
    monkeypatch.setenv("BEAM_ETL_RUNNERS_DIR", str(tmp_path / "runners"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BEAM_ETL_PRISM", raising=False)
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    path = tmp_path / "runners" / f"prism-{BEAM_VERSION}" / "prism"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_preflight_refuses_regrouping_below_an_exactly_once_source_on_prism(fake_prism):
    spec, configs = spec_of("pg_upsert", steps=GROUP)
    with pytest.raises(PreflightError) as err:
        preflight(spec, configs, ["--runner=PrismRunner", "--streaming"])
    message = str(err.value)
    assert "PrismRunner does not support durable_checkpoints" in message
    assert "exactly_once source read feeding the regrouping step(s) per_id (GroupByAggregate)" in message
    assert "Prism is not built" not in message  # the only reason is the guarantee


def test_preflight_accepts_the_streaming_exactly_once_graph_without_regrouping_on_prism(fake_prism):
    spec, configs = spec_of("pg_upsert")
    report = preflight(spec, configs, ["--runner=PrismRunner", "--streaming"])
    assert report.prism_binary == fake_prism
    assert {"streaming", "unbounded_sdf", "bundle_finalization"} <= set(report.features)
    assert "durable_checkpoints" not in report.features
