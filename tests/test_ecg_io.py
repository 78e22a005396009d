"""ECG loaders: WESAD pickles, WFDB records (the shared PhysioNet set), plain files, labels."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medlite.data.ecg import (
    DRIVEDB3_LABEL_NAMES,
    DRIVEDB_LABEL_NAMES,
    WESAD_LABELS_BINARY,
    Recording,
    drivedb_marker_events,
    drivedb_protocol_phases,
    drivedb_stress_labels,
    find_ecg_channel,
    labels_from_intervals,
    load_signal_file,
    load_wesad,
    load_wfdb,
    read_drivedb_durations,
    resample_recording,
)
from medlite.errors import DataError

# ---------------------------------------------------------------------------------------
# WESAD


@pytest.fixture
def wesad_fixture(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "wesad_fixture" / "S16_git.pkl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _read_pickle(path: Path) -> dict:
    """The file as the WESAD readme loads it (the plain, unrestricted unpickler)."""
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def _write_pickle(path: Path, data: object) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(data, handle)
    return path


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wesad_fixture_reads_chest_ecg_at_700_hz(wesad_fixture: Path) -> None:
    raw = _read_pickle(wesad_fixture)
    rec = load_wesad(wesad_fixture)
    assert (rec.fs, rec.signal.size, rec.subject) == (700.0, 37100, "S16")
    np.testing.assert_array_equal(rec.signal, raw["signal"]["chest"]["ECG"][:, 0])
    # The fixture is labelled 7 ("ignore") throughout: nothing is kept.
    assert np.all(rec.labels == -1)
    assert rec.label_names == {0: "baseline", 1: "stress", 2: "amusement"}


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wesad_label_codes_are_mapped(wesad_fixture: Path, tmp_path: Path) -> None:
    raw = _read_pickle(wesad_fixture)
    n = raw["label"].size
    # Blocks of protocol codes 0, 1, 2, 3, 4, 7, 1 with hand-picked lengths.
    codes = [0, 1, 2, 3, 4, 7, 1]
    lengths = [100, 10_000, 8_000, 7_000, 5_000, 6_000]
    lengths.append(n - sum(lengths))
    raw["label"] = np.repeat(codes, lengths).astype(np.int32)
    path = _write_pickle(tmp_path / "S99.pkl", raw)

    three = load_wesad(path)
    expected = np.repeat([-1, 0, 1, 2, -1, -1, 0], lengths)
    np.testing.assert_array_equal(three.labels, expected)
    assert np.bincount(three.labels[three.labels >= 0]).tolist() == [
        10_000 + lengths[-1],
        8_000,
        7_000,
    ]

    two = load_wesad(path, WESAD_LABELS_BINARY)
    np.testing.assert_array_equal(two.labels, np.repeat([-1, 0, 1, 0, -1, -1, 0], lengths))
    assert two.label_names == {0: "non-stress", 1: "stress"}
    # A custom map names its classes after the protocol phases it merges.
    custom = load_wesad(path, {1: 0, 4: 0, 2: 1})
    assert custom.label_names == {0: "baseline+meditation", 1: "stress"}
    assert (custom.labels == 0).sum() == 10_000 + 5_000 + lengths[-1]


def _wesad_like(n: int = 50, labels: np.ndarray | None = None) -> dict:
    return {
        "signal": {"chest": {"ECG": np.zeros((n, 1)), "EDA": np.zeros((n, 1))}},
        "label": np.ones(n, dtype=np.int32) if labels is None else labels,
        "subject": "S1",
    }


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a pickle", "not a WESAD pickle"),
        ({"label": np.ones(3)}, "field signal missing"),
        ({"signal": {"wrist": {}}, "label": np.ones(3)}, "field signal.chest missing"),
        ({"signal": {"chest": {"EDA": np.ones((3, 1))}}, "label": np.ones(3)}, "signal.chest.ECG"),
        ({"signal": {"chest": {"ECG": np.ones((3, 1))}}}, "field label missing"),
        (_wesad_like(labels=np.ones(49, dtype=np.int32)), "49 samples but signal.chest.ECG has 50"),
        (_wesad_like(labels=np.full(50, 9, dtype=np.int32)), "unknown codes 9"),
        (_wesad_like(labels=np.full(50, 1.5)), "unknown codes 1.5"),
        (_wesad_like(labels=np.array(["1"] * 50)), "field label is not numeric"),
        ({"x": _Exploit()}, "not a WESAD pickle (refers to builtins.print"),
    ],
)
def test_wesad_errors_name_file_and_field(
    tmp_path: Path, content: object, message: str, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "S1.pkl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write_pickle(path, content)
    with pytest.raises(DataError, match="S1.pkl") as info:
        load_wesad(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "pickle code ran" not in capsys.readouterr().out


def test_wesad_without_subject_field_uses_file_stem(tmp_path: Path) -> None:
    data = _wesad_like()
    del data["subject"]
    rec = load_wesad(_write_pickle(tmp_path / "S7.pkl", data))
    assert rec.subject == "S7"
    assert np.all(rec.labels == 0)


# ---------------------------------------------------------------------------------------
# WFDB: the shared PhysioNet records

# name: (record path under ecg/, fs, samples, chosen channel, all channel names)
SHARED_RECORDS = {
    "mitdb_100": ("mitdb_100/100", 360.0, 650_000, "MLII", ["MLII", "V5"]),
    "ptbdb": (
        "ptbdb_s0010_re/s0010_re",
        1000.0,
        38_400,
        "ii",
        ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3"]
        + ["v4", "v5", "v6", "vx", "vy", "vz"],
    ),
    "a103l": ("challenge2015_a103l/a103l", 250.0, 82_500, "II", ["II", "V", "PLETH"]),
    "v102s": ("challenge2015_v102s/v102s", 250.0, 75_000, "II", ["II", "V", "PLETH", "RESP"]),
    "drive17a": (
        "drivedb_drive17a/drive17a",
        480.0,
        836_224,
        "ECG",
        ["ECG", "EMG", "foot GSR", "hand GSR", "HR", "marker", "RESP"],
    ),
    "drive17b": (
        "drivedb_drive17b/drive17b",
        496.0,
        756_960,
        "ECG",
        ["ECG", "EMG", "foot GSR", "hand GSR", "HR", "marker", "RESP"],
    ),
}


def _parse_header(path: Path) -> tuple[float, int, list[dict]]:
    """Frame rate, frames and per-signal fields of a WFDB header, parsed by hand."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    _, n_signals, frame_fs, n_frames = lines[0].split()[:4]
    signals = []
    for line in lines[1 : 1 + int(n_signals)]:
        parts = line.split(maxsplit=8)
        fmt, gain = parts[1], parts[2]
        samples_per_frame = int(fmt.split("x")[1].split("+")[0]) if "x" in fmt else 1
        gain_value = float(gain.split("/")[0].split("(")[0])
        zero = int(parts[4])
        baseline = int(gain.split("(")[1].split(")")[0]) if "(" in gain else zero
        signals.append(
            {
                "name": parts[8] if len(parts) > 8 else "",
                "spf": samples_per_frame,
                "gain": gain_value,
                "baseline": baseline,
                "initial": int(parts[5]),
            }
        )
    return float(frame_fs), int(n_frames), signals


@pytest.mark.shared
@pytest.mark.parametrize("name", list(SHARED_RECORDS))
def test_shared_wfdb_records_load_with_header_rate_and_length(shared_dir: Path, name: str) -> None:
    relative, fs, n_samples, channel, names = SHARED_RECORDS[name]
    base = shared_dir / "data" / "ecg" / relative
    frame_fs, n_frames, signals = _parse_header(base.with_suffix(".hea"))
    assert [s["name"] for s in signals] == names
    ecg = next(s for s in signals if s["name"] == channel)

    rec = load_wfdb(base)
    assert rec.fs == pytest.approx(fs) == pytest.approx(frame_fs * ecg["spf"])
    assert rec.signal.size == n_samples == n_frames * ecg["spf"]
    assert rec.duration_s == pytest.approx(n_frames / frame_fs)
    assert 250 <= rec.fs <= 1000
    assert rec.units == "mV" and rec.subject == base.name
    assert np.all(rec.labels == -1)
    # First sample in mV = (initial ADC value - baseline) / gain, from the header alone.
    assert rec.signal[0] == pytest.approx((ecg["initial"] - ecg["baseline"]) / ecg["gain"])
    finite = rec.signal[np.isfinite(rec.signal)]
    assert 0.3 < np.percentile(finite, 99.9) - np.percentile(finite, 0.1) < 10  # mV, not ADC


@pytest.mark.shared
def test_shared_ptbdb_matches_raw_int16_samples(shared_dir: Path) -> None:
    # s0010_re.dat holds 12 interleaved int16 leads with gain 2000/mV and baseline 0.
    base = shared_dir / "data" / "ecg" / "ptbdb_s0010_re" / "s0010_re"
    raw = np.fromfile(base.with_suffix(".dat"), dtype="<i2").reshape(-1, 12)
    for index, lead in [(0, "i"), (1, "ii"), (10, "v5")]:
        rec = load_wfdb(base, channel=lead)
        np.testing.assert_allclose(rec.signal, raw[:, index] / 2000.0)
    assert load_wfdb(base, channel="V5").signal[5] == pytest.approx(raw[5, 10] / 2000.0)
    np.testing.assert_allclose(load_wfdb(base, channel=1).signal, raw[:, 1] / 2000.0)


@pytest.mark.shared
def test_shared_record_resampled_on_load(shared_dir: Path) -> None:
    base = shared_dir / "data" / "ecg" / "mitdb_100" / "100"
    rec = load_wfdb(base.with_suffix(".hea"), fs=256)
    assert rec.fs == 256.0
    assert rec.signal.size == int(np.ceil(650_000 * 256 / 360))


def _write_record(folder: Path, name: str, columns: dict[str, np.ndarray], fs: float, units):
    """A WFDB record (16-bit, one sample per frame) written by wfdb itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pandas warnings inside wfdb 4.3
        import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    signals = np.column_stack(list(columns.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        wfdb.wrsamp(
            name,
            fs=fs,
            units=list(units),
            sig_name=list(columns),
            p_signal=signals,
            fmt=["16"] * signals.shape[1],
            write_dir=str(folder),
        )
    return folder / name


def test_wfdb_channel_choice_units_and_errors(tmp_path: Path) -> None:
    t = np.arange(2000) / 200.0
    ecg_uv = 800 * np.sin(2 * np.pi * 1.2 * t)
    base = _write_record(
        tmp_path / "rec",
        "r1",
        {"resp": np.cos(t), "chest ECG": ecg_uv, "pleth": np.sin(t)},
        200,
        ["NU", "uV", "NU"],
    )
    rec = load_wfdb(base)
    assert rec.fs == 200.0 and rec.units == "mV"
    np.testing.assert_allclose(rec.signal, ecg_uv / 1000, atol=2e-3)
    # A folder with one record stands for it; a non-voltage channel keeps its units.
    resp = load_wfdb(tmp_path / "rec", channel="RESP")
    assert resp.units == "NU"
    np.testing.assert_allclose(resp.signal, np.cos(t), atol=1e-3)

    no_ecg = _write_record(tmp_path / "other", "r2", {"resp": t, "pleth": t}, 200, ["NU", "NU"])
    with pytest.raises(DataError, match=r"r2.hea: no ECG channel among resp, pleth: pass channel"):
        load_wfdb(no_ecg)
    with pytest.raises(DataError, match="no channel named 'ecg'; it has resp, pleth"):
        load_wfdb(no_ecg, channel="ecg")
    with pytest.raises(DataError, match="channel 5 out of range"):
        load_wfdb(no_ecg, channel=5)
    with pytest.raises(DataError, match=r"missing.hea: WFDB header not found"):
        load_wfdb(tmp_path / "missing")
    (tmp_path / "bad.hea").write_text("bad header\n")
    with pytest.raises(DataError, match=r"bad.hea: not a readable WFDB record"):
        load_wfdb(tmp_path / "bad")
    (tmp_path / "rec" / "r3.hea").write_text("r3 1 100 10\n")
    with pytest.raises(DataError, match="holds 2 WFDB headers"):
        load_wfdb(tmp_path / "rec")


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["resp", "ECG lead II"], 1),
        (["PLETH", "II", "V"], 1),
        (["MLII", "V5"], 0),
        (["V5", "MLII"], 1),
        (["V1", "II", "ECG2"], 2),
        (["vx", "v5"], 1),
        (["i", "ii"], 1),
        (["i", "v1"], 0),
        (["ABP", "PLETH"], None),
    ],
)
def test_find_ecg_channel(names: list[str], expected: int | None) -> None:
    assert find_ecg_channel(names) == expected


def test_resample_recording_keeps_waveform_and_labels() -> None:
    fs = 700.0
    t = np.arange(7000) / fs
    labels = np.where(t < 4.0, 0, 1)
    rec = Recording(np.sin(2 * np.pi * 5 * t), fs, labels, "s", "mem", {0: "a", 1: "b"})
    out = resample_recording(rec, 256.0)
    assert out.fs == 256.0 and out.signal.size == 2560
    new_t = np.arange(out.signal.size) / out.fs
    inner = slice(50, -50)  # the polyphase filter's edges are not a sine
    np.testing.assert_allclose(out.signal[inner], np.sin(2 * np.pi * 5 * new_t[inner]), atol=0.01)
    np.testing.assert_array_equal(out.labels, np.where(new_t < 4.0 - 0.5 / fs, 0, 1))
    assert resample_recording(rec, 700.0) is rec


# ---------------------------------------------------------------------------------------
# Plain files and label intervals


def test_labels_from_intervals_by_hand() -> None:
    intervals = pd.DataFrame({"start_s": [0.5, 2.0], "end_s": [1.0, 9.0], "label": [1, 0]})
    labels = labels_from_intervals(30, 10.0, intervals)
    expected = np.full(30, -1)
    expected[5:10] = 1  # samples at 0.5 ... 0.9 s
    expected[20:30] = 0  # 2.0 s to the end (the interval is cut at 3.0 s)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"start_s": [0, 1], "end_s": [2, 3], "label": [0, 1]}, "1-3 s: overlaps 0-2 s"),
        ({"start_s": [2], "end_s": [1], "label": [0]}, "need 0 <= start_s < end_s"),
        ({"start_s": [5], "end_s": [6], "label": [0]}, "starts after the signal's end at 3 s"),
        ({"start_s": [0], "end_s": [1], "label": [-1]}, "label must be a code >= 0"),
        ({"start_s": [0], "end_s": [1]}, "column label missing"),
    ],
)
def test_labels_from_intervals_errors(rows: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        labels_from_intervals(30, 10.0, pd.DataFrame(rows))


def test_csv_with_label_column_and_nan_gap(tmp_path: Path) -> None:
    path = tmp_path / "p1.csv"
    path.write_text("ecg,label\n0.1,0\n0.2,0\n,1\n0.4,1\n0.5,\n")
    rec = load_signal_file(path, fs=100)
    np.testing.assert_array_equal(rec.signal, [0.1, 0.2, np.nan, 0.4, 0.5])
    np.testing.assert_array_equal(rec.labels, [0, 0, 1, 1, -1])
    assert (rec.fs, rec.subject, rec.label_names) == (100.0, "p1", {0: "0", 1: "1"})


def test_csv_sampling_rate_from_time_column_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "p2.csv"
    pd.DataFrame({"time_s": np.arange(6) / 250, "lead": np.arange(6.0)}).to_csv(path, index=False)
    rec = load_signal_file(path, fs=None)
    assert rec.fs == pytest.approx(250.0)
    np.testing.assert_array_equal(rec.signal, np.arange(6.0))
    with pytest.raises(DataError, match="fs=100 Hz given but the file says 250 Hz"):
        load_signal_file(path, fs=100)

    bare = tmp_path / "p3.csv"
    bare.write_text("ecg\n1\n2\n")
    with pytest.raises(DataError, match=r"p3.csv: sampling rate missing: pass fs"):
        load_signal_file(bare, fs=None)


def test_csv_signal_column_choice(tmp_path: Path) -> None:
    path = tmp_path / "p4.csv"
    path.write_text("resp,ecg_ii,eda\n1,2,3\n4,5,6\n")
    np.testing.assert_array_equal(load_signal_file(path, 10).signal, [2, 5])
    np.testing.assert_array_equal(load_signal_file(path, 10, column="eda").signal, [3, 6])
    with pytest.raises(DataError, match="no column 'emg'; it has resp, ecg_ii, eda"):
        load_signal_file(path, 10, column="emg")
    two = tmp_path / "p5.csv"
    two.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"p5.csv: several possible signal columns \(a, b\)"):
        load_signal_file(two, 10)
    text = tmp_path / "p6.csv"
    text.write_text("ecg\n1\nabc\n")
    with pytest.raises(DataError, match=r"p6.csv line 3: column ecg is not a number"):
        load_signal_file(text, 10)


def test_interval_labels_from_csv_file_with_class_names(tmp_path: Path) -> None:
    signal_path = tmp_path / "s1.npy"
    np.save(signal_path, np.arange(100.0))
    intervals = tmp_path / "s1_intervals.csv"
    intervals.write_text("start_s,end_s,label\n1.0,2.5,stress\n0.0,1.0,baseline\n")
    rec = load_signal_file(
        signal_path, fs=20, labels=intervals, label_names={0: "baseline", 1: "stress"}
    )
    np.testing.assert_array_equal(rec.labels, np.repeat([0, 1, -1], [20, 30, 50]))
    assert rec.label_names == {0: "baseline", 1: "stress"}
    with pytest.raises(DataError, match=r"s1_intervals.csv: unknown label 'baseline'.*label_names"):
        load_signal_file(signal_path, fs=20, labels=intervals)


def test_per_sample_labels_and_length_mismatch(tmp_path: Path) -> None:
    signal_path = tmp_path / "s2.npy"
    np.save(signal_path, np.zeros((40, 1)))
    np.save(tmp_path / "labels.npy", np.repeat([0, 2], 20))
    rec = load_signal_file(signal_path, 10, labels=tmp_path / "labels.npy")
    assert np.bincount(rec.labels).tolist() == [20, 0, 20]
    rec = load_signal_file(signal_path, 10, labels=np.ones(40, dtype=int))
    assert np.all(rec.labels == 1)

    np.save(tmp_path / "short.npy", np.zeros(39, dtype=int))
    with pytest.raises(DataError, match=r"short.npy: label track has 39 samples .*s2.npy has 40"):
        load_signal_file(signal_path, 10, labels=tmp_path / "short.npy")
    (tmp_path / "b.csv").write_text("ecg,label\n1,0\n2,1\n")
    with pytest.raises(DataError, match=r"b.csv \(labels argument\): label track has 3 samples"):
        load_signal_file(tmp_path / "b.csv", 10, labels=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"labels must be integer codes, found 0.5"):
        load_signal_file(signal_path, 10, labels=np.full(40, 0.5))


def test_npz_with_fs_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "s3.npz"
    np.savez(path, ecg=np.linspace(0, 1, 30), labels=np.repeat([1, 0, -1], 10), fs=np.array(128.0))
    rec = load_signal_file(path, fs=None)
    assert rec.fs == 128.0 and rec.signal[-1] == 1.0
    np.testing.assert_array_equal(rec.labels, np.repeat([1, 0, -1], 10))
    (tmp_path / "x.edf").write_bytes(b"0")
    with pytest.raises(DataError, match="unsupported signal file type '.edf'"):
        load_signal_file(tmp_path / "x.edf", 10)


# ---------------------------------------------------------------------------------------
# drivedb labels


def test_marker_events_on_a_hand_made_track() -> None:
    fs = 15.0
    marker = np.full(int(600 * fs), 10.0)
    marker[int(30 * fs)] = 16.0  # single-sample glitch: ignored
    marker[int(100 * fs) : int(100 * fs) + 40] += 2.0  # handling, 2 above: ignored
    marker[int(110 * fs) : int(110 * fs) + 3] = [20, 30, 22]  # transition at 110 s
    marker[int(300 * fs) : int(300 * fs) + 3] = [17, 18, 17]  # two spikes 12 s apart:
    marker[int(312 * fs) : int(312 * fs) + 4] = [20, 40, 45, 20]  # one event at the higher
    events = drivedb_marker_events(marker, fs)
    np.testing.assert_allclose(events, [110 + 1 / fs, 312 + 1 / fs], atol=1.5 / fs)


@pytest.fixture
def drivedb_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "ecg"


@pytest.mark.shared
def test_drive17a_rest_then_driving(drivedb_dir: Path) -> None:
    rec = drivedb_stress_labels(drivedb_dir / "drivedb_drive17a" / "drive17a")
    t = np.arange(rec.labels.size) / rec.fs
    # Spikes found by inspecting the marker: 26.8 s (start of the protocol), 956.9 s.
    changes = np.flatnonzero(np.diff(rec.labels)) + 1
    assert rec.labels[changes - 1].tolist() == [-1, 0] and rec.labels[changes].tolist() == [0, 1]
    np.testing.assert_allclose(t[changes], [26.8, 956.9], atol=2.0)
    assert (rec.subject, rec.fs, rec.label_names) == ("drive17", 480.0, DRIVEDB_LABEL_NAMES)


@pytest.mark.shared
def test_drive17b_driving_then_final_rest(drivedb_dir: Path) -> None:
    rec = drivedb_stress_labels(drivedb_dir / "drivedb_drive17b" / "drive17b")
    t = np.arange(rec.labels.size) / rec.fs
    changes = np.flatnonzero(np.diff(rec.labels)) + 1
    assert rec.labels[changes - 1].tolist() == [1, 0] and rec.labels[changes].tolist() == [0, -1]
    np.testing.assert_allclose(t[changes], [610.4, 1510.2], atol=2.0)
    assert rec.subject == "drive17" and rec.fs == 496.0


@pytest.mark.shared
def test_drive17_rests_last_as_long_as_published_rests(drivedb_dir: Path) -> None:
    published = pd.read_csv(drivedb_dir / "drivedb_time_intervals_drives05-16.csv")
    rests = pd.concat([published["Initial Rest"], published["Final Rest"]]).dropna()
    low, high = rests.min() - 0.5, rests.max() + 0.5  # minutes
    for name in ("drive17a", "drive17b"):
        rec = drivedb_stress_labels(drivedb_dir / f"drivedb_{name}" / name)
        rest_minutes = (rec.labels == 0).sum() / rec.fs / 60
        assert low <= rest_minutes <= high, name
    # Heart rate rises when driving starts: 10 % more beats per minute in the first
    # driving minutes than in the last minutes of rest (R peaks by scipy).
    from scipy.signal import find_peaks

    rec = drivedb_stress_labels(drivedb_dir / "drivedb_drive17a" / "drive17a")
    peaks, _ = find_peaks(rec.signal, distance=int(0.3 * rec.fs), prominence=0.6)
    start = np.flatnonzero(rec.labels == 1)[0] / rec.fs
    before = np.sum((peaks / rec.fs > start - 300) & (peaks / rec.fs < start))
    after = np.sum((peaks / rec.fs > start) & (peaks / rec.fs < start + 300))
    assert after > 1.1 * before


@pytest.mark.shared
def test_drivedb_margin_and_explicit_phases(drivedb_dir: Path) -> None:
    base = drivedb_dir / "drivedb_drive17a" / "drive17a"
    rec = drivedb_stress_labels(base, margin_s=30.0)
    t = np.arange(rec.labels.size) / rec.fs
    assert np.all(rec.labels[np.abs(t - 956.8) < 29.0] == -1)
    assert rec.labels[int(990 * rec.fs)] == 1 and rec.labels[int(900 * rec.fs)] == 0
    everything_rest = drivedb_stress_labels(base, phases=("rest", "rest", "city"))
    assert everything_rest.labels[0] == 0 and everything_rest.labels[-1] == 1
    with pytest.raises(DataError, match=r"2 marker events \(at 26.8, 956.8 s\) .* names 2"):
        drivedb_stress_labels(base, phases=("rest", "driving"))
    with pytest.raises(DataError, match="unknown phase 'stress'"):
        drivedb_stress_labels(base, phases=("none", "rest", "stress"))


def _marker_with_spikes(n: int, fs: float, times: list[float]) -> np.ndarray:
    marker = np.full(n, 10.0)
    for time in times:
        marker[int(time * fs) : int(time * fs) + 3] = 30.0
    return marker


def test_full_protocol_rule_on_a_written_record(tmp_path: Path) -> None:
    fs, duration = 10.0, 1200.0
    n = int(fs * duration)
    transitions = [20.0, 200.0, 400.0, 500.0, 600.0, 700.0, 900.0, 1180.0]
    columns = {"ECG": np.zeros(n), "marker": _marker_with_spikes(n, fs, transitions)}
    base = _write_record(tmp_path, "drive05", columns, fs, ["mV", "mV"])
    rec = drivedb_stress_labels(base)
    # Each 3-sample spike peaks at its middle sample, one after its start.
    first, rest_ends, drive_ends, final_ends = (int(t * fs) + 1 for t in (20, 200, 900, 1180))
    expected = np.full(n, -1)
    expected[first:rest_ends] = 0  # initial rest; the event at 20 s starts the protocol
    expected[rest_ends:drive_ends] = 1  # city, highway, city, highway, city
    expected[drive_ends:final_ends] = 0  # final rest; the event 20 s before the end closes it
    np.testing.assert_array_equal(rec.labels, expected)
    assert rec.subject == "drive05"

    short = {"ECG": np.zeros(n), "marker": _marker_with_spikes(n, fs, transitions[1:5])}
    with pytest.raises(DataError, match=r"drive06.hea: 4 marker events .* pass phases"):
        drivedb_stress_labels(_write_record(tmp_path, "drive06", short, fs, ["mV", "mV"]))
    no_marker = {"ECG": np.zeros(n), "HR": np.zeros(n)}
    with pytest.raises(DataError, match="no channel named 'marker' among ECG, HR"):
        drivedb_stress_labels(_write_record(tmp_path, "drive07", no_marker, fs, ["mV", "bpm"]))


def test_published_durations_name_the_segments_whatever_precedes_the_protocol() -> None:
    minutes = (15.0, 16.0, 7.5, 6.0, 7.5, 15.0, 15.0)
    start = 97.0  # more than a minute in: the edge rule would not call it the start
    transitions = start + 60 * np.cumsum([0, *minutes])
    events = np.concatenate([[30.0], transitions + np.array([0, 8, -5, 3, 0, -9, 4, 6])])
    phases = drivedb_protocol_phases(events, minutes)
    assert phases == ("none", "none", "rest", "city", "highway", "city", "highway", "city",
                      "rest", "none")
    assert len(phases) == events.size + 1
    unknown_end = drivedb_protocol_phases(events[:-1], (*minutes[:6], float("nan")))
    assert unknown_end[-1] == "none" and unknown_end[-2] == "city"
    with pytest.raises(DataError, match="match no run of the published segment durations"):
        drivedb_protocol_phases(events, (20.0, *minutes[1:]))


def test_three_levels_on_a_written_record(tmp_path: Path) -> None:
    fs, n = 10.0, 12000
    transitions = [20.0, 200.0, 400.0, 500.0, 600.0, 700.0, 900.0, 1180.0]
    columns = {"ECG": np.zeros(n), "marker": _marker_with_spikes(n, fs, transitions)}
    base = _write_record(tmp_path, "drive08", columns, fs, ["mV", "mV"])
    table = tmp_path / "durations.csv"
    pd.DataFrame([{"Drive No": "Drive08", "Initial Rest": 3.0, "City 1": 10 / 3,
                   "Highway": 5 / 3, "City 2": 5 / 3, "Highway 2": 5 / 3, "City 3": 10 / 3,
                   "Final Rest": 14 / 3, "Total rec. time(min)": 20}]).to_csv(table,
                                                                             index=False)
    rec = drivedb_stress_labels(base, durations=read_drivedb_durations(table), levels=3)
    t = (np.arange(n) - 1) / fs  # each spike peaks one sample after its start
    expected = np.full(n, -1)
    codes = (0, 2, 1, 2, 1, 2, 0)  # rest, city, highway, city, highway, city, rest
    for low, high, code in zip(transitions[:-1], transitions[1:], codes, strict=True):
        expected[(t >= low) & (t < high)] = code
    np.testing.assert_array_equal(rec.labels, expected)
    assert rec.label_names == DRIVEDB3_LABEL_NAMES
    pd.read_csv(table).drop(columns="City 3").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="bad.csv: no column 'City 3'"):
        read_drivedb_durations(tmp_path / "bad.csv")


@pytest.mark.shared
def test_drive05_and_06_labelled_by_their_published_durations(drivedb_dir: Path) -> None:
    durations = read_drivedb_durations(drivedb_dir / "drivedb_time_intervals_drives05-16.csv")
    for name in ("drive05", "drive06"):
        rec = drivedb_stress_labels(drivedb_dir / f"drivedb_{name}" / name,
                                    durations=durations, levels=3)
        published = durations[name]
        minutes = {code: (rec.labels == code).sum() / rec.fs / 60 for code in (0, 1, 2)}
        # rest = initial + final, highway = both highways, city = the three cities
        expected = {0: published[0] + published[6], 1: published[2] + published[4],
                    2: published[1] + published[3] + published[5]}
        for code in expected:
            assert minutes[code] == pytest.approx(expected[code], abs=0.5), (name, code)
        two = drivedb_stress_labels(drivedb_dir / f"drivedb_{name}" / name,
                                    durations=durations)
        np.testing.assert_array_equal(two.labels, np.where(rec.labels > 0, 1, rec.labels))


@pytest.mark.shared
def test_the_drivedb3_scheme_reads_a_manifest_row_with_its_durations(drivedb_dir: Path) -> None:
    from medlite.data.recordings import RecordingSpec, load_recording, scheme_class_names

    names = scheme_class_names("drivedb3")
    assert names == ["rest", "highway", "city"]
    spec = RecordingSpec(drivedb_dir / "drivedb_drive05" / "drive05", "drivedb",
                         labels=str(drivedb_dir / "drivedb_time_intervals_drives05-16.csv"))
    recording = load_recording(spec, "drivedb3", names)
    assert set(np.unique(recording.labels)) == {-1, 0, 1, 2}
    drive17 = RecordingSpec(drivedb_dir / "drivedb_drive17a" / "drive17a", "drivedb",
                            labels=spec.labels)
    # drive17's driving is neither known city nor highway: only its rest is labelled
    assert set(np.unique(load_recording(drive17, "drivedb3", names).labels)) == {-1, 0}
