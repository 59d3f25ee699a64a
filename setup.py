"""k2ssl_fairseq: k2SSL (Zipformer SSL, ScaledAdam/Eden, bucketed data) as a fairseq user-dir plugin.

fairseq itself is deliberately not in ``install_requires``: users install the plugin next to the
fairseq they already have (any distribution that imports on their Python). ``make setup`` pins a
known-good one (see requirements.txt).
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

#: The version lives in one place: the package's ``__version__``.
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "k2ssl_fairseq" / "__init__.py").read_text(),
                    re.M).group(1)

setup(
    name="k2ssl_fairseq",
    version=VERSION,
    description="k2SSL (Zipformer SSL, ScaledAdam + Eden, bucketed loading) as a fairseq plugin",
    packages=find_packages(include=["k2ssl_fairseq", "k2ssl_fairseq.*"]),
    package_data={"k2ssl_fairseq": ["config/*/*.yaml", "config/*/*/*.yaml"]},
    python_requires=">=3.10",
    # What the package imports at run time; fairseq (which brings hydra-core and omegaconf too) is yours.
    install_requires=["torch>=2.1", "torchaudio", "numpy", "soundfile", "omegaconf", "hydra-core", "PyYAML",
                      "psutil", "editdistance"],
    extras_require={
        "kmeans": ["faiss-cpu"],  # k2ssl-make-labels / k2ssl-learn-kmeans (or your own faiss-gpu build)
        "sklearn": ["scikit-learn", "joblib"],  # --sklearn-model export for fairseq's simple_kmeans tools
        "bench": ["matplotlib"],  # k2ssl-benchmark's plots
    },
    entry_points={
        "console_scripts": [
            "k2ssl-hydra-train=k2ssl_fairseq.cli:hydra_train",
            "k2ssl-benchmark=k2ssl_fairseq.bench.ab:main",
            "k2ssl-info=k2ssl_fairseq.tools.info:main",
            "k2ssl-decode=k2ssl_fairseq.tools.decode_ctc:main",
            "k2ssl-dump-features=k2ssl_fairseq.tools.dump_features:main",
            "k2ssl-dump-labels=k2ssl_fairseq.tools.dump_labels:main",
            "k2ssl-export-icefall=k2ssl_fairseq.tools.export_icefall_checkpoint:main",
            "k2ssl-import-icefall=k2ssl_fairseq.tools.import_icefall_checkpoint:main",
            "k2ssl-learn-kmeans=k2ssl_fairseq.tools.learn_kmeans:main",
            "k2ssl-make-demo-corpus=k2ssl_fairseq.tools.make_demo_corpus:main",
            "k2ssl-make-labels=k2ssl_fairseq.tools.make_labels:main",
            "k2ssl-migrate=k2ssl_fairseq.tools.migrate_checkpoint:main",
            "k2ssl-validate-corpus=k2ssl_fairseq.tools.validate_corpus:main",
        ]
    },
)
