"""Packaging for mxprivacy."""
from setuptools import find_packages, setup

CORE = [
    "mxnet==1.9.1",
    "numpy==1.23.5",  # mxnet 1.9.1 fails to import with numpy>=1.24 (np.bool)
    "scipy>=1.9,<1.14",
    "pandas>=1.5,<2.3",
    "scikit-learn>=1.1,<1.6",
    "tqdm>=4.60",
]

EXTRAS = {
    "test": ["pytest>=7", "hypothesis>=6.80", "dp-accounting==0.6.0"],
    "notebooks": ["nbclient>=0.8", "nbformat>=5.7", "ipykernel>=6", "matplotlib>=3.6"],
    "bench": ["torch==2.13.0", "opacus==1.6.0", "anonypy"],
    # flwr 1.12 is the newest Flower that resolves with numpy 1.23.5; [simulation] adds ray 2.10
    "federated": ["flwr[simulation]==1.12.0"],
    "encrypted": ["tenseal==0.3.18"],
}

setup(
    name="mxprivacy",
    version="0.1.0",
    description="Differential privacy for Apache MXNet Gluon: DP-SGD, accounting, anonymization",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mxprivacy", "mxprivacy.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mxprivacy=mxprivacy.cli:main"]},
    license="Apache-2.0",
)
