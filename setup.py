"""The one compiled part of vzrep: the source's block-scan kernel (C, BLAKE3's C code vendored).

It is built as an extension module file but loaded with ctypes (source_agent/native), so it needs a
C compiler and no Python headers. The build is optional: without a compiler vzrep installs anyway
and scans with its pure-Python loop (slower; ``vzrep-source pass`` says which one it uses).
"""

import platform

from setuptools import Extension, setup

NATIVE = "source_agent/native"
sources = [
    f"{NATIVE}/blockscan.c",
    f"{NATIVE}/blake3/blake3.c",
    f"{NATIVE}/blake3/blake3_dispatch.c",
    f"{NATIVE}/blake3/blake3_portable.c",
]
macros: list[tuple[str, str | None]] = []
machine = platform.machine().lower()
if machine in ("x86_64", "amd64"):
    sources += [f"{NATIVE}/simd_{n}.c" for n in ("sse2", "sse41", "avx2", "avx512")]
elif machine in ("aarch64", "arm64"):
    sources.append(f"{NATIVE}/blake3/blake3_neon.c")
    macros.append(("BLAKE3_USE_NEON", "1"))

setup(
    ext_modules=[
        Extension(
            "source_agent.native._blockscan",
            sources=sources,
            define_macros=macros,
            extra_compile_args=["-O3", "-g0", "-fvisibility=hidden"],
            extra_link_args=["-s"],
            optional=True,
        )
    ]
)
