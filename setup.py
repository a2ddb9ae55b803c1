"""Build of mailexpress._core against the system OpenSSL, and of the test
hooks module mailexpress._testhooks (pure protocol files only; for the test
suite, not part of the shipped core: MAILEXPRESS_BUILD_TESTHOOKS=0 leaves
it out of a release build).

csrc/proto/  pure protocol code: no Python, no sockets
csrc/io/     sockets and TLS
csrc/py/     the Python binding (module, Session, the send engine's wrapper)
csrc/testing/ the test hooks module

Environment switches (for development and CI, off by default):
  MAILEXPRESS_BUILD_STRICT=1    -Werror on top of -Wall -Wextra
  MAILEXPRESS_BUILD_DEBUG=1     -O0 -g and assert() kept
  MAILEXPRESS_BUILD_SANITIZE=1  AddressSanitizer + UBSan (run with LD_PRELOAD of libasan)
"""
import os
import sys
from glob import glob

from setuptools import Extension, setup


def flag(name):
    return os.environ.get(name, "") not in ("", "0")


proto = sorted(glob("csrc/proto/*.c"))
sources = proto + sorted(glob("csrc/io/*.c")) + sorted(glob("csrc/py/*.c"))
include_dirs = ["csrc/proto", "csrc/io", "csrc/py"]
headers = sorted(glob("csrc/*/*.h"))
compile_args = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wformat=2",
    "-Wno-missing-field-initializers",
    "-Wno-cast-function-type",
    "-fvisibility=hidden",
]
link_args = []
macros = [
    # Pin the OpenSSL API we use: deprecated calls fail to compile.
    ("OPENSSL_API_COMPAT", "0x30000000L"),
    ("OPENSSL_NO_DEPRECATED", "1"),
    ("_POSIX_C_SOURCE", "200809L"),
    ("_DEFAULT_SOURCE", "1"),
]
undef = []
if flag("MAILEXPRESS_BUILD_STRICT"):
    compile_args.append("-Werror")
if flag("MAILEXPRESS_BUILD_DEBUG") or flag("MAILEXPRESS_BUILD_SANITIZE"):
    compile_args += ["-O0", "-g3", "-fno-omit-frame-pointer"]
    undef.append("NDEBUG")
if flag("MAILEXPRESS_BUILD_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    compile_args += san
    link_args += san

if sys.platform == "win32":  # pragma: no cover - not supported
    raise SystemExit("mailexpress builds on POSIX systems only")

common = dict(
    include_dirs=include_dirs,
    define_macros=macros,
    undef_macros=undef,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)
extensions = [
    Extension("mailexpress._core", sources=sources, depends=headers,
              libraries=["ssl", "crypto"], **common),
]
if os.environ.get("MAILEXPRESS_BUILD_TESTHOOKS", "1") not in ("", "0"):
    extensions.append(
        Extension("mailexpress._testhooks", sources=["csrc/testing/testhooks.c"] + proto,
                  depends=headers, **common))

setup(ext_modules=extensions)
