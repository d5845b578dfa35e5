"""Shared pieces of the benchmark: model shapes, building and caching the random policy/reference pair,
peak-memory probes and the protocol between ``run.py`` and its worker subprocesses.

Every measured variant runs in a fresh worker process (``run.py --worker SPEC OUT``), so its peak memory
is its own and no allocator cache or warmed-up state leaks from one variant into the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "xlreward" / "bench-models"
RESULTS = REPO / "bench" / "results"
RUN_PY = Path(__file__).resolve().parent / "run.py"

# Bump when what the builders write changes, so cached builds are rebuilt.
BUILDER_VERSION = 1
TOKENIZER_VOCAB = 32000  # asked of the BPE trainer; the tiny built-in corpus yields ~1k tokens

MODEL_SHAPES: dict[str, dict[str, Any]] = {
    # The CPU benchmark model: ~58M parameters, Llama-shaped, 32k vocabulary.
    "bench-60m": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 1376,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "initializer_range": 0.1,  # wider than real models, so log-probs are far from uniform
    },
    # Llama-3-8B shapes, random init (GPU only).
    "llama3-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
    },
    # Only for checking the harness itself in seconds; its numbers mean little.
    "bench-tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "initializer_range": 0.1,
    },
}
GPU_ONLY_SHAPES = {"llama3-8b"}


@dataclass(frozen=True)
class PairDirs:
    policy: Path
    reference: Path


def _key(payload: dict[str, Any]) -> str:
    text = json.dumps({**payload, "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _atomic_build(folder: Path, build: Any) -> Path:
    """Runs ``build(staging)`` once; concurrent or interrupted builds never leave a half-written folder."""
    if (folder / "COMPLETE").exists():
        return folder
    staging = folder.with_name(folder.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build(staging)
    (staging / "COMPLETE").touch()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def ensure_tokenizer() -> Path:
    """The small multilingual byte-level BPE tokenizer of ``tiny_models`` (Llama-3 chat template), saved
    once. Token-space rows only use its pad/EOS ids; the service row tokenizes text with it."""

    def build(staging: Path) -> None:
        from xlreward.trainer.tiny_models import build_tokenizer

        build_tokenizer("llama3", TOKENIZER_VOCAB).save_pretrained(staging)

    return _atomic_build(CACHE / f"tokenizer-{_key({'vocab': TOKENIZER_VOCAB})}", build)


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ensure_tokenizer()), local_files_only=True)


def model_config(shape: str, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **MODEL_SHAPES[shape],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def parameter_count(shape: str) -> dict[str, int]:
    """Parameters of ``shape``, counted on the meta device (no memory): in all, in the input embedding
    (a lookup, no FLOPs), in the LM head, and in the decoder layers between them."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(shape, load_tokenizer()))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    return {"total": total, "embedding": embedding, "lm_head": head, "layers": total - embedding - head}


def build_model(shape: str, seed: int, device: str, dtype_name: str) -> Any:
    """A randomly initialised model of ``shape``, created directly on ``device`` (an 8B model is never
    materialised in host memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(shape, load_tokenizer())
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))
    return model.eval()


def ensure_pair_on_disk(shape: str, seed: int, device: str = "cpu") -> PairDirs:
    """The policy (seed) and reference (seed + 1) saved with ``save_pretrained`` and the tokenizer, built
    once and cached under .cache/xlreward/bench-models. Saved in float32; a row picks its dtype at load."""
    dtype_name = "float32" if device == "cpu" else "bfloat16"
    key = _key({"shape": MODEL_SHAPES[shape], "seed": seed, "device": device, "dtype": dtype_name})

    def build(staging: Path) -> None:
        tokenizer = load_tokenizer()
        for name, model_seed in (("policy", seed), ("reference", seed + 1)):
            model = build_model(shape, model_seed, device, dtype_name)
            model.save_pretrained(staging / name)
            tokenizer.save_pretrained(staging / name)
            del model

    folder = _atomic_build(CACHE / f"{shape}-seed{seed}-{key}", build)
    return PairDirs(folder / "policy", folder / "reference")


LORA_RANK = 16


def load_pair(spec: dict[str, Any]) -> tuple[Any, Any]:
    """The (policy, reference) pair a worker spec names: loaded from disk, or built on the device.

    ``pair_mode`` "lora": the reference with a random rank-``LORA_RANK`` adapter on every linear layer as
    the policy, and None as the reference (the engine's LoRA mode: one base model in memory);
    "lora-merged": the same adapter merged into a second copy of the reference, and the reference."""
    import torch

    from xlreward.service.scoring.loading import load_causal_lm

    device, dtype_name = spec["device"], spec["dtype"]

    def load(index: int) -> Any:
        if spec.get("pair_dirs"):
            return load_causal_lm(spec["pair_dirs"][index], torch.device(device), getattr(torch, dtype_name))
        return build_model(spec["shape"], spec["seed"] + index, device, dtype_name)

    mode = spec.get("pair_mode", "pair")
    if mode == "pair":
        return load(0), load(1)
    adapted = with_random_adapter(load(1), spec["seed"])
    if mode == "lora":
        return adapted, None
    return adapted.merge_and_unload(), load(1)


def with_random_adapter(model: Any, seed: int) -> Any:
    """``model`` under a PEFT LoRA adapter with random weights (B is zero in a fresh adapter, which would
    make the policy equal the reference)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed + 7)
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear", init_lora_weights=False
    )
    return get_peft_model(model, config).eval()


# --- peak memory ---------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak memory of a measured section. CPU: resident set size (VmHWM, reset through
    /proc/self/clear_refs at the start, so the peak is this section's); torch's CPU allocations are
    invisible to tracemalloc. CUDA: torch.cuda's peak allocated bytes."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.base_mb = 0.0
        self.method = "cuda.max_memory_allocated" if device == "cuda" else "VmHWM (clear_refs reset)"

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_mb = torch.cuda.memory_allocated() / 2**20
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "VmHWM (no reset: includes loading)"
        self.base_mb = _proc_status_kb("VmRSS") / 1024

    def stop(self) -> dict[str, float]:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _proc_status_kb("VmHWM") / 1024
        return {"peak_mb": round(peak, 1), "extra_mb": round(peak - self.base_mb, 1)}


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# --- workers -------------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


def run_worker(spec: dict[str, Any], scratch: Path, timeout: float = 3600) -> dict[str, Any]:
    """Runs ``spec`` in a fresh ``run.py --worker`` process and returns what it wrote."""
    scratch.mkdir(parents=True, exist_ok=True)
    tag = f"{spec['kind']}-{spec.get('row', spec.get('variant', ''))}-{time.monotonic_ns()}"
    spec_path, out_path = scratch / f"{tag}.spec.json", scratch / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(RUN_PY), "--worker", str(spec_path), str(out_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not out_path.exists():
        tail = (done.stdout + done.stderr)[-3000:]
        raise WorkerError(f"worker {tag} exited with {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    spec_path.unlink(missing_ok=True)
    out_path.unlink(missing_ok=True)
    return result


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def machine_info(device: str) -> dict[str, Any]:
    import platform

    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    info["cpu_bf16_flags"] = _cpu_flags({"avx512_bf16", "amx_bf16", "amx_tile"})
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_flags(wanted: set[str]) -> list[str]:
    """Which of ``wanted`` the CPU advertises (bf16 matmul support decides whether bf16 rows are fast)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []
