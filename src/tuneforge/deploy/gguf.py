"""GGUF export through llama.cpp's own converter (convert_hf_to_gguf.py).

llama.cpp is not on PyPI as Python code, but the llama-cpp-python source package carries it: its
`vendor/llama.cpp/` holds the converter with the `gguf-py` and `conversion/` folders it imports.
We download that sdist once with pip (2 MB of it is kept) instead of building llama-cpp-python, which
would compile llama.cpp for minutes and is not needed to convert.
"""

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.home import tuneforge_home

LLAMA_CPP_PYTHON = "0.3.36"
QUANTS = ("f16", "bf16", "f32", "q8_0")
_KEEP = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/", "LICENSE")


def converter_dir() -> Path:
    """A folder with llama.cpp's convert_hf_to_gguf.py: $TUNEFORGE_LLAMA_CPP (a llama.cpp checkout) or
    the converter taken from the pinned llama-cpp-python sdist, downloaded into the tuneforge home once."""
    own = os.environ.get("TUNEFORGE_LLAMA_CPP")
    if own:
        if not (Path(own) / "convert_hf_to_gguf.py").is_file():
            raise UserError(f"TUNEFORGE_LLAMA_CPP={own}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout.")
        return Path(own)
    target = tuneforge_home() / "llama.cpp" / LLAMA_CPP_PYTHON
    if not (target / "convert_hf_to_gguf.py").is_file():
        _fetch(target)
    return target


def _fetch(target: Path) -> None:
    """pip downloads the sdist, so the user's index, mirror, proxy and certificates apply as for any install."""
    spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON}"
    print(f"Fetching llama.cpp's GGUF converter once ({spec} source package, 77 MB) into {target} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--progress-bar", "on", "-d", tmp, spec], stderr=subprocess.PIPE, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            reason = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
            raise UserError(f"GGUF export needs llama.cpp's converter, taken from the {spec} source package, which pip "
                            f"could not download ({reason}). Where you have network: pip download --no-deps "
                            f"--no-binary :all: {spec}, unpack it and set TUNEFORGE_LLAMA_CPP=<unpacked>/vendor/llama.cpp")
        staged = Path(tmp) / "llama.cpp"
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                rel = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and member.isfile() and rel.startswith(_KEEP):
                    member.name = rel
                    tar.extract(member, staged, filter="data")
        staged.rename(target)


def convert(hf_dir: Path, outfile: Path, quant: str) -> None:
    """Convert a merged Hugging Face folder into one GGUF file, showing the converter's progress."""
    config_path = hf_dir / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:  # left by models that were read from a GGUF
        config_path.write_text(json.dumps(config, indent=2))
    script = converter_dir() / "convert_hf_to_gguf.py"
    print(f"Converting to GGUF ({quant}) with llama.cpp's converter ...", flush=True)
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(outfile), "--outtype", quant]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise UserError(f"llama.cpp's converter could not convert {hf_dir} (exit {proc.returncode}):\n{tail}\n"
                        "Architectures it supports are listed by: python convert_hf_to_gguf.py --print-supported-models")


def read_metadata(path: Path) -> dict:
    """A GGUF file's key/value metadata (strings and numbers) as read back by the `gguf` package."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta = {}
    for field in reader.fields.values():
        value = field.contents()
        meta[field.name] = f"[{len(value)} items]" if isinstance(value, list) and len(value) > 16 else value
    return meta
