"""Packaging for tunmesh: the library, the `tunmesh` CLI and the twistd plugin."""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

DOCS_REQUIRES = ["shtab>=1.7", "argparse-manpage>=4.5"]

setup(
    name="tunmesh",
    version="0.1.0",
    description="Layer 3 mesh VPN sidecar for containers (Twisted)",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # The project root as the one package root: an editable install (`pip install -e .`) then puts the
    # root on sys.path (a .pth line) instead of an import hook. Twisted finds plugins by scanning every
    # sys.path entry for twisted/plugins/ (twisted.plugin.pluginPackagePaths); an import hook is
    # invisible to that scan, and `twistd tunmesh` said "Unknown command: tunmesh".
    package_dir={"": "."},
    packages=find_packages(include=["tunmesh", "tunmesh.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/tunmesh_plugin.py"]},
    install_requires=[
        # The range the private names of tunmesh.twisted_internals were checked on (its TESTED_RANGE);
        # `tox -e newest-twisted` runs the unit suite on the newest release, `tox -e oldest-twisted` on the lowest.
        # Below 26.4 tunmesh does not even import (api/server.py subscripts WrappingFactory at runtime).
        "Twisted[tls]>=26.4,<27",
        "klein>=23.5",
        "treq>=23.11",
        "pyOpenSSL>=24.0",
        "service-identity>=24.1",
        "PyJWT>=2.8",
        "cryptography>=42",
        "python-pytun>=2.4",
        "PyYAML>=6.0",
        "prometheus-client>=0.20",
        "attrs>=23.1",
        "pyroute2>=0.7.9",
    ],
    extras_require={
        # Shell completion (`tunmesh completion`) and the man page (`tunmesh man`), generated from the CLI
        # parser (tunmesh/clidocs.py). The generated files are committed and installed (data_files below),
        # so only regenerating them needs these.
        "docs": DOCS_REQUIRES,
        "dev": [
            *DOCS_REQUIRES,
            "hypothesis>=6.90",
            # tests/unit/test_twisted_internals.py: the installed Twisted within the pinned range
            "packaging>=23",
            "ruff>=0.5",
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "types-PyYAML",
            # Offline validation of contrib/kubernetes (Kubernetes JSON schemas) and contrib/compose
            # (the compose-spec schema that check-jsonschema vendors): tests/unit/test_manifests.py.
            # Every docstring parses as reStructuredText: tests/unit/test_docstrings.py.
            "docutils>=0.20",
            "kubernetes-validate>=1.30",
            "check-jsonschema>=0.28",
            "jsonschema>=4.18",
        ],
    },
    # Generated from the CLI parser and committed (tests/unit/test_clidocs.py keeps them current);
    # installed under the environment's prefix, where man and bash-completion/zsh look.
    data_files=[
        ("share/man/man1", ["docs/man/tunmesh.1"]),
        ("share/bash-completion/completions", ["contrib/completion/bash/tunmesh"]),
        ("share/zsh/site-functions", ["contrib/completion/zsh/_tunmesh"]),
    ],
    entry_points={"console_scripts": ["tunmesh = tunmesh.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
