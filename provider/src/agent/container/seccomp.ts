/**
 * The default seccomp filter, built here as a classic BPF program: it
 * denies with EPERM the system calls that containers never need and that
 * widen the kernel's attack surface, and allows everything else.
 *
 */
import { X86_64_SYSCALLS } from "../../common/syscalls";

export { X86_64_SYSCALLS };


/**
 * Calls every container is denied, with the reason. Kept as data so that
 * tests and docs can list them.
 */
export const DENIED_SYSCALLS: { name: string; reason: string }[] = [
  { name: "init_module", reason: "kernel module loading" },
  { name: "finit_module", reason: "kernel module loading" },
  { name: "delete_module", reason: "kernel module unloading" },
  { name: "create_module", reason: "obsolete module interface" },
  { name: "get_kernel_syms", reason: "obsolete module interface" },
  { name: "query_module", reason: "obsolete module interface" },
  { name: "kexec_load", reason: "replaces the running kernel" },
  { name: "kexec_file_load", reason: "replaces the running kernel" },
  { name: "reboot", reason: "reboots the cell" },
  { name: "add_key", reason: "the kernel keyring is not namespaced" },
  { name: "request_key", reason: "the kernel keyring is not namespaced" },
  { name: "keyctl", reason: "the kernel keyring is not namespaced" },
  { name: "bpf", reason: "loads programs into the kernel" },
  { name: "perf_event_open", reason: "kernel profiling leaks cell-wide data" },
  { name: "userfaultfd", reason: "a common aid in kernel exploits" },
  { name: "syslog", reason: "reads the kernel log (dmesg)" },
  { name: "acct", reason: "process accounting is cell-wide" },
  { name: "settimeofday", reason: "the clock is cell-wide" },
  { name: "clock_settime", reason: "the clock is cell-wide" },
  { name: "clock_adjtime", reason: "the clock is cell-wide" },
  { name: "adjtimex", reason: "the clock is cell-wide" },
  { name: "swapon", reason: "swap is cell-wide" },
  { name: "swapoff", reason: "swap is cell-wide" },
  { name: "quotactl", reason: "quotas are set by the cell" },
  { name: "lookup_dcookie", reason: "kernel profiling interface" },
  { name: "name_to_handle_at", reason: "file handles bypass path checks (the 'shocker' escape)" },
  { name: "open_by_handle_at", reason: "file handles bypass path checks (the 'shocker' escape)" },
  { name: "iopl", reason: "raw port I/O" },
  { name: "ioperm", reason: "raw port I/O" },
  { name: "_sysctl", reason: "obsolete sysctl interface" },
  { name: "uselib", reason: "obsolete loader interface" },
  { name: "ustat", reason: "obsolete interface" },
  { name: "nfsservctl", reason: "obsolete interface" },
  { name: "move_pages", reason: "moves pages of other processes between NUMA nodes" },
  { name: "kcmp", reason: "compares kernel objects of other processes" },
  { name: "process_vm_readv", reason: "reads another process's memory" },
  { name: "process_vm_writev", reason: "writes another process's memory" },
  { name: "ptrace", reason: "traces other processes" },
];

/** Calls denied to unprivileged containers only: privileged ones keep CAP_SYS_ADMIN and may mount. */
export const DENIED_UNPRIVILEGED_SYSCALLS: { name: string; reason: string }[] = [
  { name: "mount", reason: "mounting is for privileged containers" },
  { name: "umount2", reason: "unmounting could reveal what masks hide" },
  { name: "pivot_root", reason: "changing the root is for the runtime" },
  { name: "open_tree", reason: "new mount API" },
  { name: "move_mount", reason: "new mount API" },
  { name: "fsopen", reason: "new mount API" },
  { name: "fsconfig", reason: "new mount API" },
  { name: "fsmount", reason: "new mount API" },
  { name: "fspick", reason: "new mount API" },
  { name: "mount_setattr", reason: "new mount API" },
];

const CLONE_NEWUSER = 0x10000000;
const EPERM = 1;
const ENOSYS = 38;

// Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JEQ_K = 0x15;
const BPF_JMP_JGE_K = 0x35;
const BPF_JMP_JSET_K = 0x45;
const BPF_RET_K = 0x06;
const SECCOMP_RET_KILL_PROCESS = 0x80000000;
const SECCOMP_RET_ERRNO = 0x00050000;
const SECCOMP_RET_ALLOW = 0x7fff0000;
const AUDIT_ARCH_X86_64 = 0xc000003e;
/** Syscall numbers with this bit set belong to the x32 ABI, which has its own table. */
const X32_SYSCALL_BIT = 0x40000000;

// Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6].
const OFFSET_NR = 0;
const OFFSET_ARCH = 4;
const OFFSET_ARG0_LOW = 16;

export interface Instruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

function statement(code: number, k: number): Instruction {
  return { code, jt: 0, jf: 0, k: k >>> 0 };
}

function jump(code: number, k: number, jt: number, jf: number): Instruction {
  return { code, jt, jf, k: k >>> 0 };
}

export interface FilterOptions {
  privileged: boolean;
  /** Further calls to deny, by name, on top of the baseline. */
  extraDenied?: string[];
}

/** Names of every call the filter denies for these options. */
export function deniedSyscallNames(options: FilterOptions): string[] {
  const names = DENIED_SYSCALLS.map((entry) => entry.name);
  if (!options.privileged) names.push(...DENIED_UNPRIVILEGED_SYSCALLS.map((entry) => entry.name));
  for (const name of options.extraDenied ?? []) if (!names.includes(name)) names.push(name);
  return names;
}

/**
 * Builds the filter. The architecture check comes first: without it a
 * process could switch to the 32-bit or x32 syscall table, where the same
 * numbers name other calls, and slip past every rule.
 */
export function buildFilter(options: FilterOptions): Instruction[] {
  if (process.arch !== "x64") {
    // NOTE: only x86_64 has a syscall table here; the agent refuses to start containers elsewhere.
    throw new Error(`the seccomp filter has no syscall table for architecture ${process.arch}`);
  }
  const denied = deniedSyscallNames(options).map((name) => {
    const number = X86_64_SYSCALLS[name];
    if (number === undefined) throw new Error(`unknown system call ${JSON.stringify(name)} in the seccomp deny list`);
    return number;
  });

  const program: Instruction[] = [
    statement(BPF_LD_W_ABS, OFFSET_ARCH),
    jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
    statement(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
    statement(BPF_LD_W_ABS, OFFSET_NR),
    jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
    statement(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
  ];

  if (!options.privileged) {
    // New user namespaces would hand the container a fresh set of
    // capabilities over namespaces it creates. clone3 passes its flags in
    // memory that BPF cannot read, so it reports ENOSYS and libc falls back
    // to clone, whose flags the next rules check.
    program.push(jump(BPF_JMP_JEQ_K, X86_64_SYSCALLS.clone3, 0, 1), statement(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));
    for (const name of ["clone", "unshare"]) {
      program.push(
        jump(BPF_JMP_JEQ_K, X86_64_SYSCALLS[name], 0, 4),
        statement(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
        jump(BPF_JMP_JSET_K, CLONE_NEWUSER, 0, 1),
        statement(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
        statement(BPF_RET_K, SECCOMP_RET_ALLOW),
      );
    }
  }

  for (const number of denied) {
    program.push(jump(BPF_JMP_JEQ_K, number, 0, 1), statement(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
  }
  program.push(statement(BPF_RET_K, SECCOMP_RET_ALLOW));
  return program;
}

/** Encodes the program as an array of struct sock_filter (8 bytes each, native byte order). */
export function encodeFilter(program: Instruction[]): Buffer {
  const buffer = Buffer.alloc(program.length * 8);
  program.forEach((instruction, index) => {
    buffer.writeUInt16LE(instruction.code, index * 8);
    buffer.writeUInt8(instruction.jt, index * 8 + 2);
    buffer.writeUInt8(instruction.jf, index * 8 + 3);
    buffer.writeUInt32LE(instruction.k, index * 8 + 4);
  });
  return buffer;
}
