/**
 * Container networking on a cell: settings, the bridge, addresses, veth
 * pairs, port assignment and bandwidth limits. The rules engine renders
 * nftables rules from the attachment files written here.
 *
 * State under /var/lib/cellfleet/network/:
 *   settings.json          CellNetworkSettings, written the first time a
 *                          container.create carries network settings
 *   containers/<id>.json   AttachmentRecord: a ContainerAttachment plus
 *                          what cleanup after a crash needs
 *
 * Every change holds the cell-wide "network" lock, which the rules engine
 * shares, from the address allocation through the nftables transaction.
 * Attaching writes the attachment file before it creates any device, so an
 * agent that dies half-way leaves a file that the next attach, or a delete of
 * that container, finds and cleans up.
 */
import { promises as fs } from "node:fs";
import path from "node:path";

import type { CellNetworkSettings, ContainerAttachment } from "../../common/network-state";
import { type Bandwidth, containerSubnetProblem, gatewayOf, type PortRequest, SECURITY_GROUP_NAME_PATTERN } from "../../common/network-spec";
import { CELL_PATHS } from "../../common/protocol";
import { processStartTime } from "../container/launcher";
import { AgentFailure } from "../errors";
import { exists, readJson, writeFileAtomic } from "../files";
import { withLock } from "../lock";
import { applyBandwidth, bandwidthDrift, removeBandwidth } from "./bandwidth";
import { BRIDGE_NAME, describeRoute, ensureBridge, interfaceExists, overlappingRoute, readRoutes, removeBridge, SubnetOverlap } from "./bridge";
import { allocateAddress } from "./ipam";
import { assignCellPorts, listListeningSockets, PortConflict } from "./ports";
import { applyNetworkStateLocked } from "./rules-engine";
import { CommandError, type Runner, runChecked, spawnRunner } from "./tools";
import { containerEth0Addresses, createVeth, deleteInterface, interfaceNames, masterOf } from "./veth";

export const NETWORK_DIRECTORY = path.join(CELL_PATHS.root, "network");

/** The cell network settings that container.create carries from the provider configuration. */
export interface NetworkRequest {
  subnet: string;
  defaultSecurityGroups: string[];
}

/** The network fields of a validated container spec. */
export interface ContainerNetworkSpec {
  ports: PortRequest[];
  bandwidth?: Bandwidth;
  securityGroups: string[];
  labels: Record<string, string>;
}

/** An attachment file: what the rules engine reads, and what cleanup needs. */
export interface AttachmentRecord extends ContainerAttachment {
  /** The workload that was attached; when it is gone and the container has no state file, the create crashed. */
  pid: number;
  pidStartTime: string;
  mtu: number;
  bandwidth?: Bandwidth;
  attachedAt: string;
}

export interface AttachmentInspection {
  attachment: ContainerAttachment;
  /** Reasons why parts of the attachment are missing on the cell, one per part; empty when everything is in place. */
  drift: string[];
}

export interface PlumbingOptions {
  root?: string;
  runner?: Runner;
  /** Serializes changes with the rules engine; the default is the cell-wide "network" lock. */
  lock?: <T>(action: () => Promise<T>) => Promise<T>;
  /** Applies the rules for the stored state; the caller holds the lock. */
  applyRules?: () => Promise<void>;
  log?: (message: string) => void;
}

function toAttachment(record: AttachmentRecord): ContainerAttachment {
  const { id, address, hostInterface, securityGroups, ports, labels } = record;
  return { id, address, hostInterface, securityGroups, ports, labels };
}

/** Wraps a failure of one step into an AgentFailure that names the container and the step. */
function failure(containerId: string, step: string, error: unknown): AgentFailure {
  if (error instanceof AgentFailure) return error;
  const message = `container ${containerId}: ${(error as Error)?.message ?? String(error)}`;
  if (error instanceof PortConflict || error instanceof SubnetOverlap) return new AgentFailure("INVALID_REQUEST", step, message, { cause: error });
  if (error instanceof CommandError && error.kind === "MISSING_BINARY") return new AgentFailure("UNSUPPORTED_CELL", step, message, { cause: error });
  return new AgentFailure("INTERNAL", step, message, { cause: error });
}

async function step<T>(containerId: string, name: string, action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    throw failure(containerId, name, error);
  }
}

export class Plumbing {
  private readonly root: string;
  private readonly runner: Runner;
  private readonly lock: <T>(action: () => Promise<T>) => Promise<T>;
  private readonly applyRules: () => Promise<void>;
  private readonly log: (message: string) => void;

  constructor(options: PlumbingOptions = {}) {
    this.root = options.root ?? NETWORK_DIRECTORY;
    this.runner = options.runner ?? spawnRunner;
    this.lock = options.lock ?? ((action) => withLock("network", action));
    this.applyRules = options.applyRules ?? applyNetworkStateLocked;
    this.log = options.log ?? ((message) => process.stderr.write(`${new Date().toISOString()} ${message}\n`));
  }

  private get settingsFile(): string {
    return path.join(this.root, "settings.json");
  }

  private recordFile(id: string): string {
    return path.join(this.root, "containers", `${id}.json`);
  }

  async readSettings(): Promise<CellNetworkSettings | undefined> {
    return readJson<CellNetworkSettings>(this.settingsFile);
  }

  async readRecord(id: string): Promise<AttachmentRecord | undefined> {
    return readJson<AttachmentRecord>(this.recordFile(id));
  }

  async readRecords(): Promise<AttachmentRecord[]> {
    const directory = path.join(this.root, "containers");
    const names = await fs.readdir(directory).catch(() => [] as string[]);
    const records: AttachmentRecord[] = [];
    for (const name of names.filter((entry) => entry.endsWith(".json")).sort()) {
      const record = await readJson<AttachmentRecord>(path.join(directory, name));
      if (record) records.push(record);
    }
    return records;
  }

  /**
   * Decides, before the container starts, whether it gets a network: when
   * the request carries settings or the cell has stored ones. Rejects a spec
   * that needs a network on a cell without one, and settings that are invalid.
   */
  async planned(containerId: string, request: NetworkRequest | undefined, spec: ContainerNetworkSpec): Promise<boolean> {
    if (request) {
      checkRequest(containerId, request);
      return true;
    }
    if (await exists(this.settingsFile)) return true;
    const wanted = [
      spec.ports.length ? "ports" : "",
      spec.bandwidth ? "bandwidth" : "",
      spec.securityGroups.length ? "securityGroups" : "",
      Object.keys(spec.labels).length ? "labels" : "",
    ].filter(Boolean);
    if (wanted.length) {
      throw new AgentFailure(
        "INVALID_REQUEST",
        "check container network",
        `container ${containerId} sets ${wanted.join(", ")}, but the cell has no container network and the request carries no network settings: set containerSubnet in the provider configuration`,
      );
    }
    return false;
  }

  /**
   * Attaches a starting container: address, veth pair, cell ports, bandwidth
   * limits, then the rules. Returns undefined when the cell has no network.
   * On failure everything made here is removed again.
   */
  async attach(params: { id: string; pid: number; network?: NetworkRequest; spec: ContainerNetworkSpec }): Promise<ContainerAttachment | undefined> {
    const { id, pid, spec } = params;
    const started = Date.now();
    return this.lock(async () => {
      const settings = await step(id, "store network settings", () => this.storeSettings(id, params.network));
      if (!settings) return undefined;

      await step(id, "clean up interrupted attachments", () => this.reclaim(id));
      const others = await this.readRecords();
      const mtu = await step(id, "create bridge", () => ensureBridge(this.runner, settings, this.log));

      const address = allocateAddress(settings.subnet, settings.gateway, others.map((other) => other.address));
      if (!address) {
        throw new AgentFailure("INVALID_REQUEST", "allocate address", `container ${id}: containerSubnet ${settings.subnet} has no free address left for ${others.length + 1} containers: delete containers or use a larger subnet`);
      }
      const listening = await step(id, "list listening sockets", () => listListeningSockets(this.runner));
      const ports = await step(id, "assign cell ports", async () => assignCellPorts(id, spec.ports, others, listening));

      const names = interfaceNames(id);
      const record: AttachmentRecord = {
        id,
        address,
        hostInterface: names.host,
        securityGroups: spec.securityGroups,
        ports,
        labels: spec.labels,
        pid,
        pidStartTime: (await processStartTime(pid)) ?? "",
        mtu,
        bandwidth: spec.bandwidth,
        attachedAt: new Date().toISOString(),
      };
      await step(id, "write attachment", () => this.writeRecord(record));

      try {
        const prefixLength = Number(settings.subnet.split("/")[1]);
        await step(id, "create veth pair", () => createVeth(this.runner, { pid, names, bridge: settings.bridge, mtu, address, prefixLength, gateway: settings.gateway }));
        if (spec.bandwidth) {
          const bandwidth = spec.bandwidth;
          await step(id, "limit bandwidth", () => applyBandwidth(this.runner, names, bandwidth, mtu));
        }
        // Applied before the workload may run, so its first packet already meets its rules.
        await step(id, "apply network rules", () => this.applyRules());
      } catch (error) {
        await this.undoAttach(record, others.length === 0);
        throw error;
      }

      const published = ports.map((port) => `${port.protocol}/${port.cellPort}->${port.containerPort}`).join(", ");
      this.log(`attached container ${id}: ${address} on ${names.host}${published ? `, ports ${published}` : ""} in ${Date.now() - started} ms`);
      return toAttachment(record);
    });
  }

  private async undoAttach(record: AttachmentRecord, lastOne: boolean): Promise<void> {
    try {
      await this.release(record);
      await this.applyRules();
      if (lastOne) await removeBridge(this.runner, (await this.readSettings())?.bridge ?? BRIDGE_NAME);
    } catch (error) {
      this.log(`cleanup after the failed attach of container ${record.id} failed: ${(error as Error).message}`);
    }
  }

  /**
   * Detaches a container whose processes are gone: removes its devices,
   * address and conntrack entries, re-applies the rules, and removes the
   * bridge after the last container. Returns false when it had no attachment.
   */
  async detach(id: string): Promise<boolean> {
    if (!(await exists(this.recordFile(id)))) return false;
    return this.lock(async () => {
      const record = await this.readRecord(id);
      if (!record) return false;
      await step(id, "remove network devices", () => this.release(record));
      try {
        await step(id, "apply network rules", () => this.applyRules());
      } catch (error) {
        // Keep the attachment, so a retried delete applies the rules again.
        await this.writeRecord(record);
        throw error;
      }
      if ((await this.readRecords()).length === 0) {
        const bridge = (await this.readSettings())?.bridge ?? BRIDGE_NAME;
        await step(id, "remove bridge", () => removeBridge(this.runner, bridge));
      }
      this.log(`detached container ${id}: released ${record.address}${record.ports.length ? ` and ${record.ports.length} cell port(s)` : ""}`);
      return true;
    });
  }

  /** Reads a container's attachment and what of it is missing on the cell; pid is the running workload, if any. */
  async inspect(id: string, pid: number | undefined): Promise<AttachmentInspection | undefined> {
    const record = await this.readRecord(id);
    if (!record) return undefined;
    const drift: string[] = [];
    if (pid !== undefined) {
      const names = interfaceNames(id);
      if (!(await interfaceExists(names.host))) {
        drift.push(`veth ${names.host} is missing on the cell`);
      } else {
        const master = await masterOf(names.host);
        const bridge = (await this.readSettings())?.bridge ?? BRIDGE_NAME;
        if (master !== bridge) drift.push(`veth ${names.host} is attached to ${master ?? "no bridge"}, not ${bridge}`);
      }
      const addresses = await containerEth0Addresses(this.runner, pid);
      if (addresses === undefined) drift.push("eth0 is missing in the container");
      else if (!addresses.some((entry) => entry.split("/")[0] === record.address)) drift.push(`eth0 in the container lacks its address ${record.address}`);
      if (record.bandwidth) drift.push(...(await bandwidthDrift(this.runner, names)));
    }
    return { attachment: toAttachment(record), drift };
  }

  private async writeRecord(record: AttachmentRecord): Promise<void> {
    await fs.mkdir(path.dirname(this.recordFile(record.id)), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.recordFile(record.id), `${JSON.stringify(record, null, 2)}\n`);
  }

  /**
   * Stores the requested settings, or returns the stored ones when the
   * request carries none. A different subnet is rejected while containers
   * have addresses from the old one. Default security groups may change at
   * any time, and apply to every container at the next rules update.
   */
  private async storeSettings(containerId: string, request: NetworkRequest | undefined): Promise<CellNetworkSettings | undefined> {
    const stored = await this.readSettings();
    if (!request) return stored;
    checkRequest(containerId, request);
    const wanted: CellNetworkSettings = {
      bridge: stored?.bridge ?? BRIDGE_NAME,
      subnet: request.subnet,
      gateway: gatewayOf(request.subnet),
      defaultSecurityGroups: request.defaultSecurityGroups,
    };
    if (stored && stored.subnet !== wanted.subnet) {
      const users = (await this.readRecords()).map((record) => record.id);
      if (users.length) {
        const listed = users.slice(0, 5).join(", ") + (users.length > 5 ? ", ..." : "");
        throw new AgentFailure(
          "INVALID_REQUEST",
          "store network settings",
          `container ${containerId}: containerSubnet ${wanted.subnet} differs from ${stored.subnet}, which ${users.length} container(s) on this cell use (${listed}): delete them before changing the subnet, or keep it`,
        );
      }
      // The old bridge carries the old gateway; the next ensureBridge creates it anew.
      await removeBridge(this.runner, stored.bridge);
    }
    if (stored?.subnet !== wanted.subnet) {
      // Checked before storing, so a rejected subnet never becomes the cell's setting.
      const overlap = overlappingRoute(wanted.subnet, await readRoutes(this.runner), wanted.bridge);
      if (overlap) throw new SubnetOverlap(`containerSubnet ${wanted.subnet} overlaps the cell's route "${describeRoute(overlap)}": choose a subnet that the cell does not use`);
    }
    if (JSON.stringify(stored) !== JSON.stringify(wanted)) {
      await fs.mkdir(this.root, { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.settingsFile, `${JSON.stringify(wanted, null, 2)}\n`);
      this.log(`stored cell network settings: subnet ${wanted.subnet}, default security groups [${wanted.defaultSecurityGroups.join(", ")}]`);
    }
    return wanted;
  }

  /**
   * Releases attachments that an interrupted create left behind: those of
   * this same container id, and those whose workload is gone although the
   * container never got a state file. A stopped container keeps its
   * attachment until it is deleted.
   */
  private async reclaim(currentId: string): Promise<void> {
    for (const record of await this.readRecords()) {
      const leftover = record.id === currentId;
      const crashed = !leftover && !(await exists(path.join(CELL_PATHS.containers, record.id, "state.json"))) && (await processStartTime(record.pid)) !== record.pidStartTime;
      if (!leftover && !crashed) continue;
      this.log(`releasing the attachment of container ${record.id} (${record.address}) that an interrupted create left`);
      await this.release(record);
    }
  }

  /** Deletes a container's devices and conntrack entries, then its attachment file. */
  private async release(record: AttachmentRecord): Promise<void> {
    const names = interfaceNames(record.id);
    await deleteInterface(this.runner, names.host);
    await removeBandwidth(this.runner, names);
    await this.forgetConnections(record.address);
    await fs.rm(this.recordFile(record.id), { force: true });
  }

  /**
   * Deletes conntrack entries that involve an address, in either direction,
   * so a later container with the same address inherits no NAT mapping or
   * established state. conntrack exits 1 when nothing matched.
   */
  private async forgetConnections(address: string): Promise<void> {
    for (const option of ["--orig-src", "--orig-dst", "--reply-src", "--reply-dst"]) {
      const argv = ["conntrack", "-D", "-f", "ipv4", option, address];
      const result = await this.runner(argv).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") return { code: 127, stdout: "", stderr: "conntrack not found" };
        throw error;
      });
      if (result.code === 127) {
        this.log(`conntrack is not installed: entries of ${address} stay until they time out`);
        return;
      }
      if (result.code !== 0 && result.code !== 1) await runChecked(this.runner, argv);
    }
  }
}

function checkRequest(containerId: string, request: NetworkRequest): void {
  const problem = containerSubnetProblem(request.subnet);
  if (problem) throw new AgentFailure("INVALID_REQUEST", "validate network settings", `container ${containerId}: ${problem}`);
  const groups = request.defaultSecurityGroups;
  if (!Array.isArray(groups) || groups.some((name) => typeof name !== "string" || !SECURITY_GROUP_NAME_PATTERN.test(name))) {
    throw new AgentFailure("INVALID_REQUEST", "validate network settings", `container ${containerId}: defaultSecurityGroups ${JSON.stringify(groups)} must be a list of security group names`);
  }
}

let defaultPlumbing: Plumbing | undefined;

/** Returns the plumbing of this agent, with the real tools, paths and lock. */
export function plumbing(): Plumbing {
  defaultPlumbing ??= new Plumbing();
  return defaultPlumbing;
}
