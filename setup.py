from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("fpncli/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="fpncli",
    version=version["__version__"],
    description="Feature-map extractor and visualizer for Detectron2's ResNet-FPN backbone (P2-P6)",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["fpncli", "fpncli.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy>=1.23",
        "opencv-python>=4.6",
        "matplotlib>=3.6",
        "click>=8.1",
        "pillow>=9.5",
        # Intel ISA-L's deflate for the PNGs (viz.visualize.encode_png): the five heatmaps of a
        # 1080p image deflated in 2.2 ms instead of zlib's 9.1, in 12% more bytes; the writing
        # threads' CPU bounds a GPU run of heatmaps. Wheels for x86-64 and 64-bit Arm; elsewhere
        # encode_png uses zlib.
        "isal>=1.6; platform_machine == 'x86_64' or platform_machine == 'AMD64'"
        " or platform_machine == 'aarch64' or platform_machine == 'arm64'",
    ],
    extras_require={
        "test": ["pytest>=7"],
        "dev": ["pytest>=7", "ruff>=0.4"],
        # --format wds: the Parquet index and object-store outputs
        "wds": ["pyarrow>=14", "fsspec>=2023.1"],
        # --engine ray (2.51: ActorPoolStrategy via compute= is the supported API again)
        "ray": ["ray[data]>=2.51", "pyarrow>=14", "fsspec>=2023.1"],
    },
    entry_points={"console_scripts": ["fpncli = fpncli.__main__:main"]},
)
