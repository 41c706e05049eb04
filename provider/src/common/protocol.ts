/**
 * Messages between the provider and the agent on a cell. The provider writes
 * one JSON request per line to the agent's stdin, and the agent writes one
 * JSON response per line to its stdout, matched by id. Responses may arrive
 * out of order because the agent serves requests concurrently.
 */
import type { ContainerInputs } from "./container-spec";
import type { NetworkPolicyState, PortMapping, SecurityGroupRule } from "./network-state";

export interface AgentRequest<M extends keyof AgentMethods = keyof AgentMethods> {
  id: number;
  method: M;
  params: AgentMethods[M]["params"];
}

export type AgentResponse =
  | { id: number; result: unknown }
  | { id: number; error: AgentErrorBody };

/** Stable error codes, so the provider never matches message text. */
export type AgentErrorCode =
  | "INVALID_REQUEST"
  | "UNSUPPORTED_CELL"
  | "IMAGE_INVALID"
  | "IMAGE_MISSING"
  | "CONTAINER_EXISTS"
  | "CONTAINER_START_FAILED"
  | "CGROUP_FAILED"
  | "QUOTA_UNSUPPORTED"
  | "INTERNAL";

export interface AgentErrorBody {
  code: AgentErrorCode;
  message: string;
  /** The step that failed, such as "mount overlay rootfs" or "write memory limit". */
  step: string;
  /** The cell's own name, from /var/lib/cellfleet/cell.json or its hostname. */
  cell: string;
}

export interface CellFacts {
  cell: string;
  agentVersion: string;
  nodeVersion: string;
  kernel: string;
  cgroupVersion: 1 | 2;
  overlay: boolean;
  quota: "loop-ext4" | "none";
}

/**
 * The spec as the agent receives it: the image is already on the cell, named
 * by digest. The agent validates it again and fills in defaults.
 */
export interface CreateContainerParams {
  id: string;
  imageDigest: string;
  spec: Omit<ContainerInputs, "image">;
  /**
   * The cell's container network from the provider configuration. The agent
   * stores it on the cell the first time; without it, a cell that has no
   * stored settings gives containers only a loopback interface.
   */
  network?: { subnet: string; defaultSecurityGroups: string[] };
}

export type ContainerStatus = "running" | "stopped";

/** The observed state of one container, read from its processes, cgroups and mounts. */
export interface ContainerObservation {
  id: string;
  status: ContainerStatus;
  /** The reason the container stopped, such as "exited with code 0". */
  reason?: string;
  /** The workload's pid in the cell's PID namespace, or 0 when stopped. */
  pid: number;
  startedAt: string;
  imageDigest: string;
  memoryBytes: number;
  cpuShares: number;
  diskQuotaBytes?: number;
  hostname: string;
  command: string[];
  env: Record<string, string>;
  workingDir: string;
  user: string;
  /** The container's IPv4 address on the cell bridge, when it has a network. */
  address?: string;
  /** Port mappings with the cell ports chosen for them. */
  ports?: PortMapping[];
}

export interface AgentMethods {
  probe: { params: Record<string, never>; result: CellFacts };
  "image.has": { params: { digest: string }; result: { present: boolean } };
  /**
   * Imports an archive that the provider uploaded to images/incoming/<hex>.tar,
   * or to `source` under /tmp when it logs in as a user who cannot write there.
   */
  "image.import": { params: { digest: string; source?: string }; result: { digest: string } };
  "container.create": { params: CreateContainerParams; result: ContainerObservation };
  "container.inspect": { params: { id: string }; result: ContainerObservation | null };
  /** Changes limits of a running container in place; every other change replaces the container. */
  "container.update": { params: { id: string; memory: number }; result: ContainerObservation };
  "container.delete": { params: { id: string }; result: { existed: boolean } };
  "container.list": { params: Record<string, never>; result: { ids: string[] } };
  /** Stores a security group's rules and applies the cell's ruleset; running containers bound to it change at once. */
  "securityGroup.put": { params: { name: string; rules: SecurityGroupRule[] }; result: SecurityGroupObservation };
  "securityGroup.inspect": { params: { name: string }; result: SecurityGroupObservation | null };
  "securityGroup.delete": { params: { name: string }; result: { existed: boolean } };
  "policy.put": { params: NetworkPolicyState; result: PolicyObservation };
  "policy.inspect": { params: { id: string }; result: PolicyObservation | null };
  "policy.delete": { params: { id: string }; result: { existed: boolean } };
}

/** The enforcement state of a security group. Drift sets enforced to false and gives the reason. */
export interface SecurityGroupObservation {
  name: string;
  rules: SecurityGroupRule[];
  /** False when the live nftables ruleset lacks part of what the stored rules render to. */
  enforced: boolean;
  drift?: string;
}

export interface PolicyObservation extends NetworkPolicyState {
  enforced: boolean;
  drift?: string;
}

export type AgentMethod = keyof AgentMethods;

/** Paths on a cell. The agent and the provider must agree on them. */
export const CELL_PATHS = {
  root: "/var/lib/cellfleet",
  agents: "/var/lib/cellfleet/agent",
  images: "/var/lib/cellfleet/images",
  incoming: "/var/lib/cellfleet/images/incoming",
  containers: "/var/lib/cellfleet/containers",
  run: "/run/cellfleet",
  cellConfig: "/var/lib/cellfleet/cell.json",
  /** Uploads by a non-root login user land here first, because only root may write the image store. */
  userUploadPrefix: "/tmp/cellfleet-upload-",
} as const;
