"""k2ssl_fairseq: k2SSL (Zipformer SSL, ScaledAdam/Eden, bucketed data) as a fairseq user-dir plugin.

fairseq itself is deliberately not in ``install_requires``: users install the plugin next to the
fairseq they already have (any distribution that imports on their Python). ``make setup`` pins a
known-good one (see requirements.txt).
"""
from setuptools import find_packages, setup

setup(
    name="k2ssl_fairseq",
    version="0.1.0",
    description="k2SSL (Zipformer SSL, ScaledAdam + Eden, bucketed loading) as a fairseq plugin",
    packages=find_packages(include=["k2ssl_fairseq", "k2ssl_fairseq.*"]),
    package_data={"k2ssl_fairseq": ["config/*/*.yaml"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "soundfile", "omegaconf", "hydra-core"],
    extras_require={"kmeans": ["faiss-cpu"], "wer": ["editdistance"]},
    entry_points={
        "console_scripts": [
            "k2ssl-hydra-train=k2ssl_fairseq.cli:hydra_train",
            "k2ssl-benchmark=k2ssl_fairseq.bench.ab:main",
        ]
    },
)
