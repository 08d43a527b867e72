#!/usr/bin/env python3
"""Boot and stop the molecule test VM (QEMU), standard library only.

    vm.py start --state-dir DIR   build/find the cached image, boot, wait for SSH, print JSON
    vm.py stop --state-dir DIR    kill the VM recorded in DIR (pid file), remove its disk overlay
    vm.py ssh --state-dir DIR -- CMD...   run a command in the VM as root

The VM: Debian 12 from build-image.sh, booted with -kernel/-initrd from a qcow2 overlay on the
cached ext4 image (the cache stays pristine). NICs: eth0 user-mode (restricted: the guest reaches
nothing outside, only SSH is forwarded from a free 127.0.0.1 port), eth1 "trunk" and eth2
"switch" on one QEMU hub, connected to nothing but each other.

Environment: TENANTNET_VM_ACCEL=auto|kvm|tcg (auto tries KVM and falls back to TCG when the
kernel does not come up on it), TENANTNET_VM_MEMORY (MiB, 2048), TENANTNET_VM_CPUS (2),
TENANTNET_VM_BOOT_TIMEOUT (s, 600).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MGMT_MAC = "52:54:00:12:34:56"  # build-image.sh's systemd-networkd file matches it
TRUNK_MAC = "52:54:00:00:01:01"
SWITCH_MAC = "52:54:00:00:02:01"
KVM_PROBE_SECONDS = 45


LOG_FILE: Path | None = None  # progress is also appended here (tail -f it during `molecule create`)


def emit(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    if LOG_FILE is not None:
        with LOG_FILE.open("a") as f:
            f.write(line + "\n")


def log(msg: str) -> None:
    emit(f"[vm {time.strftime('%H:%M:%S', time.gmtime())}] {msg}")


def fail(msg: str) -> None:
    log(f"ERROR: {msg}")
    sys.exit(1)


def build_image() -> Path:
    proc = subprocess.Popen(
        ["bash", str(HERE / "build-image.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        emit(line.rstrip("\n"))
    out = proc.stdout.read()
    if proc.wait() != 0:
        fail(f"building the VM image failed (exit {proc.returncode}); its log is above")
    return Path(out.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_base(state: dict) -> list[str]:
    return [
        "ssh",
        "-q",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=5",
        "-i",
        state["identity_file"],
        "-p",
        str(state["port"]),
        "root@127.0.0.1",
    ]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie or a recycled pid is not our QEMU
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def kill_vm(state_dir: Path) -> None:
    pid = read_pid(state_dir)
    if pid is None or not pid_alive(pid):
        return
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if str(state_dir).encode() not in cmdline:
        log(f"pid {pid} is a QEMU of another state dir; not killing it")
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    log(f"QEMU pid {pid} stopped")


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_command(image: Path, state_dir: Path, accel: str, port: int) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64",
        "-name",
        "tenantnet-molecule",
        "-machine",
        f"pc,accel={accel}",
        "-cpu",
        cpu,
        "-smp",
        os.environ.get("TENANTNET_VM_CPUS", "2"),
        "-m",
        os.environ.get("TENANTNET_VM_MEMORY", "2048"),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{state_dir / 'serial.log'}",
        "-daemonize",
        "-pidfile",
        str(state_dir / "qemu.pid"),
        "-kernel",
        str(image / "vmlinuz"),
        "-initrd",
        str(image / "initrd.img"),
        "-append",
        "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
        "-no-reboot",
        "-drive",
        f"file={state_dir / 'overlay.qcow2'},if=virtio,format=qcow2,cache=unsafe",
        "-netdev",
        f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},addr=0x3",
        "-netdev",
        "hubport,id=trunk,hubid=1",
        "-device",
        f"virtio-net-pci,netdev=trunk,mac={TRUNK_MAC},addr=0x4",
        "-netdev",
        "hubport,id=switch,hubid=1",
        "-device",
        f"virtio-net-pci,netdev=switch,mac={SWITCH_MAC},addr=0x5",
    ]


def serial_tail(state_dir: Path, lines: int = 60) -> str:
    try:
        text = (state_dir / "serial.log").read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    return "\n".join(text.splitlines()[-lines:])


def boot(image: Path, state_dir: Path, accel: str, probe: bool) -> dict | None:
    """Boots once. Returns the state, or None when a KVM probe shows KVM unusable."""
    kill_vm(state_dir)
    for name in ("overlay.qcow2", "serial.log", "qemu.pid"):
        (state_dir / name).unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image / "rootfs.ext4"),
         str(state_dir / "overlay.qcow2")],
        check=True,
    )  # fmt: skip
    port = free_port()
    cmd = qemu_command(image, state_dir, accel, port)
    (state_dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if probe:
            log(f"KVM is not usable here ({proc.stderr.strip().splitlines()[-1:]}); using TCG")
            return None
        fail(f"QEMU did not start: {proc.stderr.strip()}")
    pid = read_pid(state_dir)
    state = {
        "accel": accel,
        "pid": pid,
        "port": port,
        "identity_file": str(image / "id_ed25519"),
        "image": str(image),
        "state_dir": str(state_dir),
        "serial_log": str(state_dir / "serial.log"),
    }
    (state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    timeout = float(os.environ.get("TENANTNET_VM_BOOT_TIMEOUT", "600"))
    log(f"QEMU pid {pid} ({accel}), SSH on 127.0.0.1:{port}; waiting (<= {timeout:.0f} s)")
    kernel_seen = False
    last_note = started
    while True:
        elapsed = time.monotonic() - started
        if pid is None or not pid_alive(pid):
            if probe:
                log("QEMU exited during the KVM probe; using TCG")
                return None
            fail(f"QEMU exited while booting. Serial log:\n{serial_tail(state_dir)}")
        if not kernel_seen:
            kernel_seen = "Linux version" in serial_tail(state_dir, 10_000)
            if probe and not kernel_seen and elapsed > KVM_PROBE_SECONDS:
                log(f"no kernel output after {KVM_PROBE_SECONDS} s under KVM; using TCG")
                kill_vm(state_dir)
                return None
        if kernel_seen:
            rc = subprocess.run(
                [*ssh_base(state), "true"], capture_output=True, check=False, timeout=60
            ).returncode
            if rc == 0:
                log(f"guest up after {elapsed:.0f} s")
                state["boot_seconds"] = round(elapsed)
                (state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
                return state
        if elapsed > timeout:
            kill_vm(state_dir)
            fail(f"no SSH after {timeout:.0f} s. Serial log:\n{serial_tail(state_dir)}")
        if time.monotonic() - last_note > 30:
            last = serial_tail(state_dir, 1).strip()
            log(f"still booting ({elapsed:.0f} s): {last[-100:]}")
            last_note = time.monotonic()
        time.sleep(3)


def cmd_start(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    global LOG_FILE
    LOG_FILE = state_dir / "vm.log"
    LOG_FILE.write_text("")
    for tool in ("qemu-system-x86_64", "qemu-img", "ssh"):
        if shutil.which(tool) is None:
            fail(f"'{tool}' is missing (scripts/bootstrap.sh installs it)")
    image = build_image()
    wanted = os.environ.get("TENANTNET_VM_ACCEL", "auto")
    if wanted not in ("auto", "kvm", "tcg"):
        fail(f"TENANTNET_VM_ACCEL must be auto, kvm or tcg, not {wanted!r}")
    state = None
    if wanted == "kvm":
        state = boot(image, state_dir, "kvm", probe=False)
    elif wanted == "auto" and kvm_usable():
        state = boot(image, state_dir, "kvm", probe=True)
    if state is None:
        state = boot(image, state_dir, "tcg", probe=False)
    print(json.dumps(state))


def cmd_stop(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir).resolve()
    kill_vm(state_dir)
    (state_dir / "overlay.qcow2").unlink(missing_ok=True)
    (state_dir / "qemu.pid").unlink(missing_ok=True)


def cmd_ssh(args: argparse.Namespace) -> None:
    state = json.loads((Path(args.state_dir) / "state.json").read_text())
    os.execvp("ssh", [*ssh_base(state), *args.command])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name, func in (("start", cmd_start), ("stop", cmd_stop), ("ssh", cmd_ssh)):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True)
        if name == "ssh":
            p.add_argument("command", nargs="*")
        p.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
