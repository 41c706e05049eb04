// Every hardening property, checked from inside a running container and
// from the cell, for unprivileged and privileged containers. Each property
// is one table row with its own assertion, so a failure names the measure.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";

import { CAPABILITY_NUMBERS, DROPPED_CAPABILITIES } from "../../provider/src/agent/container/capabilities";
import { DEVICE_RULES } from "../../provider/src/agent/container/cgroup";
import { cpuSharesForMemory, MAPPED_ROOT_ID } from "../../provider/src/common/resources";
import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, findRepoRoot, type Cell } from "../helpers/cell";
import { buildProbeImage } from "../helpers/probe-image";
import { sessionFor } from "../helpers/session";

const MEMORY = 96 * 1024 * 1024;

/** The probe script, shared with scripts/runc-probe.sh so runc is measured the same way. */
const PROBE_SCRIPT = readFileSync(path.join(findRepoRoot(), "test/fixtures/probe.sh"), "utf8");

type Mode = "unprivileged" | "privileged";

interface Context {
  probe: Map<string, string>;
  cell: Cell;
  pid: number;
  id: string;
  mode: Mode;
  cellNamespaces: Map<string, string>;
}

interface Row {
  row: number;
  property: string;
  check: (context: Context) => Promise<void> | void;
}

function value(context: Context, key: string): string {
  const found = context.probe.get(key);
  assert.ok(found !== undefined, `"${key}" missing from the probe output`);
  return found;
}

function mask(context: Context, key: string): bigint {
  return BigInt(`0x${value(context, key)}`);
}

const privileged = (context: Context) => context.mode === "privileged";

const ROWS: Row[] = [
  ...["ipc", "mnt", "net", "pid", "uts"].map((ns) => ({
    row: 1,
    property: `own ${ns} namespace`,
    check: (context: Context) => assert.notEqual(value(context, `ns.${ns}`), context.cellNamespaces.get(ns)),
  })),
  {
    row: 2,
    property: "own user namespace only when unprivileged",
    check: (context) => {
      if (privileged(context)) assert.equal(value(context, "ns.user"), context.cellNamespaces.get("user"));
      else assert.notEqual(value(context, "ns.user"), context.cellNamespaces.get("user"));
    },
  },
  {
    row: 3,
    property: "uid and gid maps",
    check: (context) => {
      const expected = privileged(context) ? /^ ?0 0 4294967295;$/ : new RegExp(`^ ?0 ${MAPPED_ROOT_ID} 1; ?1 1 ${MAPPED_ROOT_ID - 1};$`);
      assert.match(value(context, "uid_map"), expected);
      assert.match(value(context, "gid_map"), expected);
    },
  },
  {
    row: 3,
    property: "container processes owned by the mapped id on the cell",
    check: async (context) => {
      const status = await context.cell.exec(["grep", "^Uid:", `/proc/${context.pid}/status`]);
      assert.match(status.stdout, new RegExp(`^Uid:\\s+${privileged(context) ? 0 : MAPPED_ROOT_ID}\\s`));
    },
  },
  {
    row: 4,
    property: "overlay rootfs entered by pivot_root",
    check: (context) => {
      assert.match(value(context, "root_mount"), /^\S+ \S+ \S+ \/ \/ .* - overlay overlay /);
      assert.equal(value(context, "cell_state_visible"), "no");
    },
  },
  {
    row: 5,
    property: "read-only /proc/sys and /proc/sysrq-trigger",
    check: (context) => {
      assert.equal(value(context, "write.proc_sys"), "denied");
      assert.equal(value(context, "write.sysrq"), "denied");
    },
  },
  {
    row: 5,
    property: "read-only /sys",
    check: (context) => {
      assert.match(value(context, "sys_mount"), / \/sys ro,/);
      assert.equal(value(context, "write.sys"), "denied");
    },
  },
  {
    row: 5,
    property: "masked /proc and /sys files read empty",
    check: (context) => {
      assert.equal(value(context, "read.proc_keys"), "0");
      assert.equal(value(context, "read.timer_list"), "0");
      assert.equal(value(context, "read.sys_firmware"), "0");
    },
  },
  { row: 6, property: "dmesg denied", check: (context) => assert.equal(value(context, "dmesg"), "denied") },
  {
    row: 7,
    property: "no runtime binary runs from the image",
    check: (context) => {
      assert.equal(value(context, "planted_ran"), "0");
      assert.equal(value(context, "runtime_exes"), "0");
    },
  },
  {
    row: 8,
    property: "only device nodes and masks are bind-mounted",
    check: (context) => {
      for (const mount of value(context, "bind_mounts").split(" ").filter(Boolean)) {
        const [source, target] = mount.split("@");
        const allowed = (source === "/null" && target.startsWith("/proc/")) || (target.startsWith("/dev/") && source === target.slice(4)) || target.startsWith("/proc/");
        assert.ok(allowed, `unexpected bind mount of ${source} on ${target}`);
      }
    },
  },
  {
    row: 10,
    property: "memory limit",
    check: async (context) => {
      const limit = await context.cell.exec(["cat", `/sys/fs/cgroup/memory/${context.cell.cgroupParent}/${context.id}/memory.limit_in_bytes`]);
      assert.equal(Number(limit.stdout), MEMORY);
    },
  },
  {
    row: 11,
    property: "cpu.shares from memory",
    check: async (context) => {
      const shares = await context.cell.exec(["cat", `/sys/fs/cgroup/cpu/${context.cell.cgroupParent}/${context.id}/cpu.shares`]);
      assert.equal(Number(shares.stdout), cpuSharesForMemory(MEMORY));
    },
  },
  {
    row: 14,
    property: "only allowlisted device nodes in /dev",
    check: (context) => {
      const allowed = new Set(["null", "zero", "full", "random", "urandom", "tty", "tty0", "tty1", "fuse", "net/tun", "pts/ptmx"]);
      for (const node of value(context, "dev").split(" ").filter(Boolean)) assert.ok(allowed.has(node), `device node /dev/${node}`);
    },
  },
  {
    row: 14,
    property: "devices cgroup allows only the allowlist",
    check: async (context) => {
      const list = await context.cell.exec(["cat", `/sys/fs/cgroup/devices/${context.cell.cgroupParent}/${context.id}/devices.list`]);
      assert.deepEqual(list.stdout.trim().split("\n").sort(), [...DEVICE_RULES].sort());
    },
  },
  {
    row: 14,
    property: "other devices cannot be opened",
    check: (context) => {
      // Unprivileged: no mknod in a user namespace. Privileged: CAP_MKNOD is
      // kept, and the devices cgroup refuses the node.
      assert.equal(value(context, "device.mknod_block"), "EPERM");
      assert.equal(value(context, "device.open_null"), "ok");
    },
  },
  ...[...DROPPED_CAPABILITIES, "CAP_SYS_ADMIN"].map((name) => ({
    row: 15,
    property: `${name} ${name === "CAP_SYS_ADMIN" ? "dropped unless privileged" : "dropped"}`,
    check: (context: Context) => {
      const bit = 1n << BigInt(CAPABILITY_NUMBERS[name]);
      const expectKept = name === "CAP_SYS_ADMIN" && privileged(context);
      for (const set of ["CapBnd", "CapEff", "CapPrm"]) assert.equal((mask(context, set) & bit) !== 0n, expectKept, `${name} in ${set}`);
    },
  })),
  {
    row: 15,
    property: "empty inheritable and ambient capabilities",
    check: (context) => {
      assert.equal(mask(context, "CapInh"), 0n);
      assert.equal(mask(context, "CapAmb"), 0n);
    },
  },
  {
    row: 16,
    property: "files of container root owned by the mapped id",
    check: async (context) => {
      const owner = await context.cell.exec(["stat", "-c", "%u", `/var/lib/cellfleet/containers/${context.id}/layer/upper/created-by-root`]);
      assert.equal(owner.stdout.trim(), String(privileged(context) ? 0 : MAPPED_ROOT_ID));
    },
  },
  {
    row: 16,
    property: "cell root's files closed to container root",
    check: (context) => assert.equal(value(context, "cell_secret"), privileged(context) ? "readable" : "denied"),
  },
  {
    row: 17,
    property: "no_new_privs set and setuid ignored",
    check: (context) => {
      assert.equal(value(context, "NoNewPrivs"), "1");
      assert.equal(value(context, "setuid_euid"), "1000");
    },
  },
  { row: 18, property: "seccomp filter installed", check: (context) => assert.equal(value(context, "Seccomp"), "2") },
  ...["keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "name_to_handle_at", "syslog", "ptrace", "process_vm_readv", "kcmp", "move_pages", "init_module", "kexec_load"].map((call) => ({
    row: 18,
    property: `${call} denied with EPERM`,
    check: (context: Context) => assert.equal(value(context, `syscall.${call}`), "EPERM"),
  })),
  {
    row: 18,
    property: "new user namespaces denied unless privileged",
    check: (context) => assert.equal(value(context, "syscall.unshare_newuser"), privileged(context) ? "ok" : "EPERM"),
  },
  {
    row: 18,
    property: "mount denied unless privileged",
    check: (context) => assert.equal(value(context, "syscall.mount"), privileged(context) ? "ENOENT" : "EPERM"),
  },
  {
    row: 18,
    property: "clone3 reports ENOSYS unless privileged",
    check: (context) => assert.equal(value(context, "syscall.clone3"), privileged(context) ? "EINVAL" : "ENOSYS"),
  },
  { row: 18, property: "ordinary calls allowed", check: (context) => assert.equal(value(context, "syscall.getpid"), "ok") },
  {
    row: 19,
    property: "only stdio reaches the workload",
    check: async (context) => {
      const fds = await context.cell.exec(["ls", `/proc/${context.pid}/fd`]);
      assert.deepEqual(fds.stdout.trim().split(/\s+/).sort(), ["0", "1", "2"]);
    },
  },
  { row: 19, property: "working directory inside the rootfs", check: (context) => assert.equal(value(context, "cwd"), "/tmp") },
  {
    row: 0,
    property: "cgroupfs not writable",
    check: (context) => assert.equal(value(context, "write.cgroupfs"), "denied"),
  },
];

function parseProbe(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    const separator = line.indexOf(": ");
    if (separator > 0) values.set(line.slice(0, separator), line.slice(separator + 2).trim());
  }
  return values;
}

describe("hardening", function () {
  this.timeout(180_000);
  let cell: Cell;
  let session: CellSession;
  let digest: string;
  const contexts = new Map<Mode, Context>();

  before(async function () {
    cell = await createCell("t-hard");
    session = await sessionFor(cell);
    const image = await buildProbeImage();
    digest = await imageDigest(image);
    await ensureImageOnCell(session, image, digest);
    // A file of the cell's root in the image store stands for any cell file the mapping does not grant.
    const rootfs = `/var/lib/cellfleet/images/${digest.slice(7)}/rootfs`;
    const planted = await cell.exec(["sh", "-c", `echo secret > ${rootfs}/cell-secret && chown 0:0 ${rootfs}/cell-secret && chmod 600 ${rootfs}/cell-secret`]);
    assert.equal(planted.code, 0, planted.stderr);

    const cellNamespaces = new Map<string, string>();
    for (const ns of ["ipc", "mnt", "net", "pid", "uts", "user"]) cellNamespaces.set(ns, (await cell.exec(["readlink", `/proc/self/ns/${ns}`])).stdout.trim());

    for (const mode of ["unprivileged", "privileged"] as Mode[]) {
      const id = `hard-${mode}`;
      const created = await session.agent.call("container.create", {
        id,
        imageDigest: digest,
        spec: { command: ["/bin/sh", "-c", `${PROBE_SCRIPT}\nexec sleep 600`], workingDir: "/tmp", memory: MEMORY, hostname: "hard", privileged: mode === "privileged" },
      });
      const log = `/var/lib/cellfleet/containers/${id}/stdout.log`;
      const deadline = Date.now() + 20_000;
      let text = "";
      while (!text.includes("done: yes")) {
        if (Date.now() > deadline) throw new Error(`the ${mode} probe did not finish: ${text}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
        text = (await cell.exec(["cat", log])).stdout;
      }
      contexts.set(mode, { probe: parseProbe(text), cell, pid: created.pid, id, mode, cellNamespaces });
    }
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
  });

  for (const mode of ["unprivileged", "privileged"] as Mode[]) {
    describe(mode, function () {
      for (const row of ROWS) {
        it(`row ${row.row}: ${row.property}`, async function () {
          await row.check(contexts.get(mode)!);
        });
      }
    });
  }
});
