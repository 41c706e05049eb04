/** The container spec that the agent sends to the init over a pipe (fd 3). */
export interface InitSpec {
  id: string;
  rootfs: {
    /** Read-only image layers, uppermost first. */
    lower: string[];
    upper: string;
    work: string;
    /** The mount point of the overlay, which pivot_root makes the new root. */
    merged: string;
  };
  hostname: string;
  command: string[];
  env: Record<string, string>;
  workingDir: string;
  uid: number;
  gid: number;
  groups: number[];
  /** No user namespace and CAP_SYS_ADMIN kept; every other measure still applies. */
  privileged: boolean;
  /** System calls denied on top of the default seccomp filter. */
  seccompDeny: string[];
}

/** The pipe the init reads its spec from. */
export const SPEC_FD = 3;
/**
 * The pipe the init reports on, one JSON line each: its pid on the cell,
 * then either the announcement of execve or the step that failed.
 */
export const STATUS_FD = 4;

/**
 * The pipe the init waits on right before execve: the agent writes "go"
 * once everything it sets up from outside (such as the network) is ready,
 * or closes the pipe to abort the start.
 */
export const GO_FD = 5;

export type InitReport = { pid: number } | { exec: true } | { failed: { step: string; message: string } };
