"""Coverage-guided fuzzing of medlite's file readers (issue 15).

Every reader must either return valid data or raise a :class:`~medlite.errors.MedliteError`
whose message is one line naming the file; anything else is a crash. Each target writes the
fuzzer's bytes to file(s) in a scratch folder, calls its readers and sorts the outcome:

- ``ok``: the reader returned data;
- a MedliteError: its message, normalised (paths, numbers and quoted text replaced), is
  counted among the target's distinct errors; a message on several lines or without the
  file's name counts as a crash (``_BadMessage``);
- anything else: a crash, whose input is saved as ``--out/<target>/crash-<sha1>`` with the
  traceback next to it (``.txt``). The exit status is 1 when any target crashed.

Usage::

    .venv/bin/python tools/fuzz_readers.py --seconds 60 --out /tmp/fuzz          # every target
    .venv/bin/python tools/fuzz_readers.py --target yaml --seconds 60 --out /tmp/fuzz

With atheris installed (``pip install -e .[fuzz]``) each target runs under libFuzzer in its
own process, guided by the coverage of medlite, Pillow, PyYAML, wfdb and zipfile; without
it, a plain random mutator of the same seed files runs instead (``--engine mutate``). A
summary per target is written to ``--out/<target>/summary.json`` and printed as a table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Separates the files of a multi-file input (WFDB header + signal, photos + scores CSVs).
SEPARATOR = b"\n\x00--\x00\n"
#: Largest image the image targets decode (keeps an execution well under a second).
FUZZ_MAX_PIXELS = 1_000_000
#: How often (executions) a running target rewrites its summary.
_SUMMARY_EVERY = 200
_REPO = Path(__file__).resolve().parents[1]


# -- seeds -----------------------------------------------------------------------------------

def _png(array: np.ndarray, **kwargs) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _wfdb_seed() -> bytes:
    """A two-channel WFDB record (format 16): header + SEPARATOR + signal file."""
    signal = np.round(np.sin(np.arange(200) / 5.0) * 1000).astype("<i2")
    data = np.column_stack([signal, signal // 2]).tobytes()
    header = b"rec 2 100 200\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\nrec.dat 16 1000 16 0 0 0 0 resp\n"
    return header + SEPARATOR + data


def _seeds() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = (rng.random((8, 8)) > 0.5).astype(np.uint8)
    csv_signal = "time_s,ecg,label\n" + "".join(f"{i / 100},{np.sin(i / 5):.3f},{i // 50}\n"
                                               for i in range(100))
    npz = io.BytesIO()
    np.savez(npz, ecg=np.sin(np.arange(100) / 5.0), labels=np.zeros(100, int), fs=100.0)
    zipped = io.BytesIO()
    header, data = _wfdb_seed().split(SEPARATOR)
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("record/rec.hea", header)
        archive.writestr("record/rec.dat", data)
    return {
        "image": [_png(rgb), _png(mask * 255), _png(rgb, format="JPEG"),
                  _png(rgb, format="BMP"), _png(rgb, format="TIFF"),
                  _png(mask.astype(np.uint16) * 1000)],
        "npy": [_npy_bytes(rng.normal(0, 500, (8, 8))), _npy_bytes(np.sin(np.arange(50) / 3.0))],
        "manifest": [b"image,mask,subject,split\nimg.png,mask.png,s1,train\n",
                     b"image,label,subject\nimg.png,nevus,s1\nimg2.png,melanoma,s2\n"],
        "visits": [b"subject,visit,region,image\n1,0,trunk,img.png\n" + SEPARATOR
                   + b"subject,visit,region,erythema,induration,desquamation,area_percent\n"
                     b"1,0,trunk,2,3,1,35\n",
                   b"subject,visit,region,image\n1,0,upper,img.png\n1,0,trunk,img2.png\n"
                   b"1,0,lower,img3.png\n" + SEPARATOR + b"subject,visit,pasi\n1,0,12.5\n"],
        "wfdb": [_wfdb_seed()],
        "signal": [csv_signal.encode(), npz.getvalue()],
        "yaml": [(_REPO / "medlite" / "configs" / "segmentation_ph2.yaml").read_bytes(),
                 b"task: stress\ndata: {recordings: rec.csv, fs: 700}\n"],
        "zip": [zipped.getvalue()],
    }


# -- targets ---------------------------------------------------------------------------------

def _scratch_files(scratch: Path) -> None:
    """Valid images the fuzzed manifests may name (img.png, img2.png, img3.png, mask.png)."""
    rng = np.random.default_rng(1)
    for name in ("img.png", "img2.png", "img3.png"):
        (scratch / name).write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    (scratch / "mask.png").write_bytes(_png((rng.random((16, 16)) > 0.5).astype(np.uint8)))


# A target writes one input to files and returns its readers: (call, files its message may
# name). Every reader is run on every input, so one failing does not hide another's crash.
Readers = list[tuple[Callable[[], object], list[Path]]]


def _image(data: bytes, scratch: Path) -> Readers:
    from medlite.data.io import decode_image, read_ct_slice, read_image, read_mask

    path = scratch / "fuzz.png"
    path.write_bytes(data)
    palette = {(0, 0, 0): 0, (255, 255, 255): 1}
    return [(lambda: decode_image(data, "upload.png", max_pixels=FUZZ_MAX_PIXELS),
             [Path("upload.png")]),
            (lambda: read_image(path, max_pixels=FUZZ_MAX_PIXELS), [path]),
            (lambda: read_mask(path, num_classes=3, max_pixels=FUZZ_MAX_PIXELS), [path]),
            (lambda: read_mask(path, palette=palette, max_pixels=FUZZ_MAX_PIXELS), [path]),
            (lambda: read_ct_slice(path, window=(40, 400), max_pixels=FUZZ_MAX_PIXELS), [path])]


def _npy(data: bytes, scratch: Path) -> Readers:
    from medlite.data.ecg import load_signal_file
    from medlite.data.io import read_ct_slice

    path = scratch / "fuzz.npy"
    path.write_bytes(data)
    return [(lambda: read_ct_slice(path, window=(40, 400)), [path]),
            (lambda: load_signal_file(path, fs=100.0), [path])]


def _manifest(data: bytes, scratch: Path) -> Readers:
    from medlite.data.classification import read_classification_manifest
    from medlite.data.manifest import read_manifest

    path = scratch / "fuzz.csv"
    path.write_bytes(data)
    return [(lambda: read_manifest(path), [path]),
            (lambda: read_classification_manifest(path), [path])]


def _visits(data: bytes, scratch: Path) -> Readers:
    from medlite.data.visits import read_visit_tables

    photos, _, scores = data.partition(SEPARATOR)
    photos_csv, scores_csv = scratch / "photos.csv", scratch / "scores.csv"
    photos_csv.write_bytes(photos)
    scores_csv.write_bytes(scores)
    return [(lambda: read_visit_tables(photos_csv, scores_csv), [photos_csv, scores_csv])]


def _wfdb(data: bytes, scratch: Path) -> Readers:
    from medlite.data.ecg import load_wfdb

    header, _, signal = data.partition(SEPARATOR)
    (scratch / "rec.hea").write_bytes(header)
    (scratch / "rec.dat").write_bytes(signal)
    return [(lambda: load_wfdb(scratch / "rec"), [scratch / "rec.hea"])]


def _signal(data: bytes, scratch: Path) -> Readers:
    from medlite.data.ecg import load_signal_file
    from medlite.data.recordings import recording_specs

    suffix = ".npz" if data.startswith(b"PK") else ".csv"
    path = scratch / f"fuzz{suffix}"
    path.write_bytes(data)
    readers: Readers = [(lambda: load_signal_file(path, fs=None), [path]),
                        (lambda: load_signal_file(path, fs=100.0, column="ecg"), [path])]
    if suffix == ".csv":
        readers += [(lambda: load_signal_file(path, fs=100.0, labels=path), [path]),
                    (lambda: recording_specs(path), [path])]
    return readers


def _yaml(data: bytes, scratch: Path) -> Readers:
    from medlite.tasks import load_config

    path = scratch / "fuzz.yaml"
    path.write_bytes(data)
    return [(lambda: load_config(path), [path])]


def _zip(data: bytes, scratch: Path) -> Readers:
    from medlite.serve.uploads import UploadLimits, recording_from_upload, unzip

    limits = UploadLimits(max_bytes=2 ** 20, max_unzipped_bytes=2 ** 20)

    def upload() -> None:
        with recording_from_upload({"upload.zip": data}, "upload.zip", limits):
            pass

    return [(lambda: unzip(data, "upload.zip", limits), [Path("upload.zip")]),
            (upload, [Path("upload.zip")])]


#: Target name -> (what it reads, the function turning one input into its readers).
TARGETS: dict[str, tuple[str, Callable[[bytes, Path], Readers]]] = {
    "image": ("decode_image, read_image, read_mask (+palette), read_ct_slice", _image),
    "npy": ("read_ct_slice and load_signal_file of .npy", _npy),
    "manifest": ("read_manifest, read_classification_manifest", _manifest),
    "visits": ("read_visit_tables (photos + PASI scores)", _visits),
    "wfdb": ("load_wfdb (header + signal file)", _wfdb),
    "signal": ("load_signal_file (CSV, .npz), recording_specs", _signal),
    "yaml": ("load_config", _yaml),
    "zip": ("unzip, recording_from_upload", _zip),
}


class _BadMessage(Exception):
    """A MedliteError whose message breaks the rules (several lines, file not named)."""


def _check_message(message: str, files: list[Path]) -> None:
    if "\n" in message or "\r" in message:
        raise _BadMessage(f"message on several lines: {message!r}")
    if not any(str(f) in message or f.name in message for f in files):
        raise _BadMessage(f"message does not name the file: {message!r}")


def normalise(message: str, scratch: Path) -> str:
    """A MedliteError message with what varies between inputs replaced (the scratch folder,
    quoted text, colours, numbers) and cut after 90 characters (lists of values)."""
    text = message.replace(str(scratch), "<dir>")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"#x?[0-9a-f]+|0x[0-9a-f]+", "#…", text)
    return re.sub(r"\d[\d,]*(\.\d+)?", "N", text)[:90]


class Campaign:
    """Counts of one target's executions, distinct errors and crashes."""

    def __init__(self, target: str, out: Path, seconds: float):
        self.target, self.out, self.seconds = target, out / target, seconds
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"medlite-fuzz-{target}-"))
        _scratch_files(self.scratch)
        self.started: float | None = None  # at the first input: imports do not count
        self.executions = self.ok = 0
        self.errors: dict[str, int] = {}
        self.crashes: dict[str, dict] = {}
        self.slowest_s = 0.0

    def run_one(self, data: bytes) -> None:
        """Every reader of the target on ``data``: count results, errors and crashes."""
        from medlite.errors import MedliteError

        self.executions += 1
        if self.started is None:
            self.started = time.monotonic()
        begun = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for read, files in TARGETS[self.target][1](data, self.scratch):
                try:
                    read()
                    self.ok += 1
                except MedliteError as error:
                    try:
                        _check_message(str(error), files)
                    except _BadMessage as finding:
                        self._crash(data, finding)
                        continue
                    key = normalise(str(error), self.scratch)
                    self.errors[key] = self.errors.get(key, 0) + 1
                except Exception as error:  # noqa: BLE001 - a crash is what we look for
                    self._crash(data, error)
        self.slowest_s = max(self.slowest_s, time.perf_counter() - begun)
        if self.executions % _SUMMARY_EVERY == 0:
            self.write_summary()

    def _crash(self, data: bytes, error: BaseException) -> None:
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "/medlite/" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        if frames and ours[-1] is not frames[-1]:
            where += f" via {Path(frames[-1].filename).name}:{frames[-1].lineno}"
        key = f"{type(error).__name__} at {where}"
        if key not in self.crashes:
            name = f"crash-{hashlib.sha1(data).hexdigest()[:12]}"
            (self.out / name).write_bytes(data)
            (self.out / f"{name}.txt").write_text("".join(traceback.format_exception(error)))
            self.crashes[key] = {"input": str(self.out / name),
                                 "message": " ".join(str(error).split())[:300], "count": 0}
        self.crashes[key]["count"] += 1

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def expired(self) -> bool:
        return self.elapsed() > self.seconds

    def summary(self) -> dict:
        return {"target": self.target, "reads": TARGETS[self.target][0],
                "seconds": round(self.elapsed(), 1),
                "executions": self.executions, "reader_calls_ok": self.ok,
                "distinct_errors": len(self.errors), "crashes": self.crashes,
                "slowest_input_s": round(self.slowest_s, 3),
                "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1]))}

    def write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary(), indent=1))

    def finish(self) -> None:
        """The final summary; the scratch folder is removed."""
        self.write_summary()
        shutil.rmtree(self.scratch, ignore_errors=True)


# -- engines ---------------------------------------------------------------------------------

def _run_atheris(campaign: Campaign) -> None:
    """libFuzzer over the target, seeded with the valid files; ends the process when the
    time is up (libFuzzer's loop never returns)."""
    import atheris

    with atheris.instrument_imports(include=["medlite", "PIL", "yaml", "wfdb", "zipfile"]):
        import medlite.data.classification  # noqa: F401
        import medlite.data.ecg  # noqa: F401
        import medlite.data.io  # noqa: F401
        import medlite.data.recordings  # noqa: F401
        import medlite.data.visits  # noqa: F401
        import medlite.serve.uploads  # noqa: F401
        import medlite.tasks  # noqa: F401
    corpus = campaign.out / "corpus"
    corpus.mkdir(exist_ok=True)
    for seed in _seeds()[campaign.target]:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)

    def one_input(data: bytes) -> None:
        if campaign.expired():
            campaign.finish()
            os._exit(0)
        campaign.run_one(data)

    atheris.Setup([sys.argv[0], str(corpus), "-timeout=20", "-rss_limit_mb=4096",
                   f"-artifact_prefix={campaign.out}/", "-print_final_stats=0"], one_input)
    atheris.Fuzz()


def _mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """One random edit: flip bits, cut, repeat a slice, splice another seed, insert bytes."""
    data = bytearray(data or b"\x00")
    kind = rng.randrange(6)
    position = rng.randrange(len(data))
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[position:]
    elif kind == 2:
        stop = min(len(data), position + rng.randint(1, 64))
        data[position:position] = data[position:stop] * rng.randint(1, 50)
    elif kind == 3:
        other = rng.choice(seeds)
        data[position:] = other[rng.randrange(len(other) or 1):]
    elif kind == 4:
        data[position:position] = rng.choice([b"\xff" * 4, b"\x00" * 4, b"nan", b"-1",
                                              b"99999999999", b",", b"\r\n", b"\xef\xbb\xbf",
                                              b"=cmd|' /C calc'!A0", b"&a [*a, *a]", b"\x7f"])
    else:
        data[position] = rng.randrange(256)
    return bytes(data)


def _run_mutator(campaign: Campaign, seed: int = 0) -> None:
    rng = random.Random(seed)
    seeds = _seeds()[campaign.target]
    corpus = list(seeds)
    while not campaign.expired():
        data = _mutate(rng.choice(corpus), rng, seeds)
        before = len(campaign.errors)
        campaign.run_one(data)
        if len(campaign.errors) > before and len(corpus) < 1000:
            corpus.append(data)  # a new kind of error: a new place to mutate from
    campaign.finish()


# -- driver ----------------------------------------------------------------------------------

def _engine(name: str) -> str:
    if name != "auto":
        return name
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "mutate"
    return "atheris"


def _table(summaries: list[dict]) -> str:
    lines = ["| target | reads | engine | s | executions | distinct errors | crashes |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        crashes = "; ".join(f"{k} (x{v['count']})" for k, v in s["crashes"].items()) or "0"
        lines.append(f"| {s['target']} | {s['reads']} | {s.get('engine', '')} | "
                     f"{s['seconds']} | {s['executions']} | {s['distinct_errors']} | "
                     f"{crashes} |")
    return "\n".join(lines)


def _run_worker(target: str, seconds: float, out: Path, engine: str) -> dict:
    """Fuzz ``target`` in a child process (libFuzzer owns its process, and a hard crash of
    one target, a timeout or running out of memory, must not end the others)."""
    summary_file = out / target / "summary.json"
    summary_file.unlink(missing_ok=True)
    begun = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--worker", "--target", target,
                           "--seconds", str(seconds), "--out", str(out), "--engine", engine],
                          capture_output=True, text=True, check=False)
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {
        "target": target, "reads": TARGETS[target][0], "seconds": 0, "executions": 0,
        "distinct_errors": 0, "crashes": {}}
    summary["engine"] = engine
    summary["wall_s"] = round(time.monotonic() - begun, 1)  # with imports and start-up
    if proc.returncode != 0:  # libFuzzer's own findings: a timeout, out of memory
        summary["crashes"][f"process exit {proc.returncode}"] = {
            "count": 1, "message": " ".join(proc.stderr[-400:].split()),
            "input": str(out / target)}
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "medlite-fuzz",
                        help="where crashes, the corpus and summaries go")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engine = _engine(args.engine)
    if args.worker:
        campaign = Campaign(args.target, args.out, args.seconds)
        (_run_atheris if engine == "atheris" else _run_mutator)(campaign)
        return 0
    summaries = []
    for target in list(TARGETS) if args.target == "all" else [args.target]:
        summary = _run_worker(target, args.seconds, args.out, engine)
        summaries.append(summary)
        print(f"{target}: {summary['executions']} executions, {summary['distinct_errors']} "
              f"distinct errors, {len(summary['crashes'])} kinds of crash", flush=True)
    print(_table(summaries))
    return 1 if any(s["crashes"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
