"""Offline stand-in for the get-pip bootstrap script of ansible-test.

ansible-test creates each sanity/units virtualenv without pip and then runs a get-pip script
it downloads from ci-files.testing.ansible.com, a host CI machines here cannot reach. This
script does the same job with what Python already ships: ``ensurepip`` puts the bundled pip
into the new virtualenv, and that pip installs the requested packages (``pip==24.2``) from
PyPI. scripts/test.sh copies it to ~/.ansible/test/cache/get_pip_<version>.py when no
cached script exists, which is where ansible-test looks first.
"""

import subprocess
import sys


def main() -> int:
    # ansible-test passes pip-install arguments plus get-pip-only flags.
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    return subprocess.call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    sys.exit(main())
