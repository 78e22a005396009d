"""A corpus of hostile files through the command line: every one a one-line error with exit
code 2, no traceback, and nothing of the user's overwritten."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from medlite.cli import main
from tests.test_fuzz_readers import png_declaring


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/medlite-exploit-ran",))


@pytest.fixture
def corpus(tmp_path):
    """Hostile files by name, written under ``tmp_path / "corpus"``."""
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (root / "masks" / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (root / "images" / "cut.png").write_bytes(png_declaring(32, 32)[:40])
    (root / "laughs.yaml").write_text("task: segmentation\na: &a [x, x, x, x, x, x, x, x, x]\n"
                                      + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p},"
                                                f" *{p}, *{p}, *{p}]\n"
                                                for p, c in zip("abcdefgh", "bcdefghi",
                                                                strict=True)))
    (root / "formula.csv").write_text("subject,visit,region,image\r\n"
                                      "=cmd|' /C calc'!A0,1,trunk,\x00nul.png\r\n",
                                      encoding="utf-8-sig")
    (root / "scores.csv").write_text("subject,visit,pasi\nS1,1,99999\n")
    torch.save({"weights": _Exploit()}, root / "exploit.pt")
    (root / "garbage.svs").write_bytes(os.urandom(2048))
    with open(root / "exploit.pkl", "wb") as handle:
        pickle.dump(_Exploit(), handle)
    return root


def weights_config(tmp_path, weights):
    """A segmentation config on a small synthetic set that starts from ``weights``."""
    from medlite.datasets.lesions import write_lesion_dataset

    manifest = write_lesion_dataset(tmp_path / "lesions", n_subjects=6, images_per_subject=1,
                                    size=(32, 32), seed=0)
    path = tmp_path / "weights.yaml"
    path.write_text(f"task: segmentation\ndata: {{manifest: {manifest}, image_size: [32, 32]}}\n"
                    f"model: {{name: tinyunet, weights_path: {weights}}}\n")
    return path


def digest(folder):
    """sha256 of every file but medlite's own locks."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line_error(capsys, code: int) -> str:
    """The error line (commands that validate many files, like ``data index``, list each
    further problem on an indented line of its own)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[0].startswith("medlite: error:"), err
    assert all(line.startswith("  ") for line in err[1:]), err
    assert not any("Traceback" in line for line in err)
    return "\n".join(err)


def test_hostile_files_through_every_command(corpus, tiny_runs, tmp_path, capsys):
    before = digest(corpus)
    seg = tiny_runs["segmentation"]
    run_before = digest(seg)
    commands = {
        "index": ["data", "index", str(corpus / "images"), str(corpus / "masks"),
                  "--out", str(tmp_path / "m.csv")],
        "check": ["data", "check", str(corpus / "formula.csv"), str(corpus / "scores.csv")],
        "train": ["train", str(corpus / "laughs.yaml"), "--out", str(tmp_path / "run")],
        "predict bomb": ["predict", str(seg), str(corpus / "images" / "bomb.png"),
                         "--out", str(tmp_path / "p1")],
        "predict cut": ["predict", str(seg), str(corpus / "images" / "cut.png"),
                        "--out", str(tmp_path / "p2")],
        "evaluate": ["evaluate", str(seg), "--data", str(corpus / "formula.csv"),
                     "--out", str(tmp_path / "e")],
        "weights": ["train", str(weights_config(tmp_path, corpus / "exploit.pt")),
                    "--out", str(tmp_path / "w")],
    }
    messages = {}
    for name, argv in commands.items():
        messages[name] = one_line_error(capsys, main(argv))
    assert "bomb.png" in messages["index"] or "cut.png" in messages["index"]
    assert "formula.csv" in messages["check"]
    assert "laughs.yaml" in messages["train"]
    assert "bomb.png" in messages["predict bomb"] and "cut.png" in messages["predict cut"]
    assert "exploit.pt" in messages["weights"] and "system" in messages["weights"]
    assert not os.path.exists("/tmp/medlite-exploit-ran")
    assert digest(corpus) == before  # nothing of the user's was changed
    assert digest(seg) == run_before  # nor of the run
    assert not (tmp_path / "m.csv").exists()
