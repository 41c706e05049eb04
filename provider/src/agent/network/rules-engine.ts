/**
 * The rules engine: reads the cell's network state from disk, renders it,
 * applies it in one nft transaction under the cell-wide "network" lock, and
 * cuts connections that lost their permission. It also serves the
 * securityGroup.* and policy.* agent methods.
 *
 * State files under /var/lib/cellfleet/network/:
 *   settings.json          CellNetworkSettings; until it exists nothing is applied
 *   containers/<id>.json   ContainerAttachment, written by the plumbing
 *   groups/<name>.json     SecurityGroupRule[], written here
 *   policies/<id>.json     NetworkPolicyState, written here
 */
import { promises as fs } from "node:fs";
import path from "node:path";

import { validateSecurityGroupRules } from "../../common/asg";
import type { CellNetworkSettings, ContainerAttachment, NetworkPolicyState, NetworkState, SecurityGroupRule } from "../../common/network-state";
import type { PolicyObservation, SecurityGroupObservation } from "../../common/protocol";
import { CELL_PATHS } from "../../common/protocol";
import { AgentFailure } from "../errors";
import { readJson, writeFileAtomic } from "../files";
import { withLock } from "../lock";
import { type ConntrackRunner, ConntrackError, ExecConntrackRunner } from "./conntrack";
import { policyDrift, readLiveRuleset, securityGroupDrift, structuralDrift } from "./drift";
import { ExecNftRunner, NftError, type NftRunner } from "./nft";
import { BRIDGE_TABLE, computeAllowLists, flowAllowed, INET_TABLE, renderRuleset } from "./ruleset";

export const NETWORK_ROOT = path.join(CELL_PATHS.root, "network");

/** Names of groups and ids of policies become file names, so they are limited to a safe alphabet. */
const NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/i;

export interface RulesEngineOptions {
  /** The directory with settings.json, containers/, groups/ and policies/. */
  root?: string;
  nft?: NftRunner;
  conntrack?: ConntrackRunner;
  /** Serializes changes; the default is the cell-wide "network" lock that the plumbing shares. */
  lock?: <T>(action: () => Promise<T>) => Promise<T>;
  /** Returns whether bridge netfilter covers the bridge; the default reads sysfs and procfs of the agent's namespace. */
  bridgeNetfilter?: (bridge: string) => Promise<boolean>;
  log?: (message: string) => void;
}

async function readFirstLine(file: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(file, "utf8")).trim();
  } catch {
    return undefined;
  }
}

/**
 * br_netfilter feeds a bridge's frames to the inet hooks when either the
 * bridge's own nf_call_iptables or the namespace-wide sysctl is on.
 */
export async function probeBridgeNetfilter(bridge: string): Promise<boolean> {
  const own = await readFirstLine(`/sys/class/net/${bridge}/bridge/nf_call_iptables`);
  const global = await readFirstLine("/proc/sys/net/bridge/bridge-nf-call-iptables");
  return own === "1" || global === "1";
}

async function listJson<T>(directory: string): Promise<{ file: string; value: T }[]> {
  let names: string[];
  try {
    names = (await fs.readdir(directory)).filter((name) => name.endsWith(".json")).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  const entries: { file: string; value: T }[] = [];
  for (const name of names) {
    const file = path.join(directory, name);
    const value = await readJson<T>(file);
    if (value !== undefined) entries.push({ file, value });
  }
  return entries;
}

function checkName(what: string, name: unknown, step: string): string {
  if (typeof name !== "string" || !NAME_PATTERN.test(name)) {
    throw new AgentFailure("INVALID_REQUEST", step, `${what} ${JSON.stringify(name)} is invalid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

function checkPolicy(policy: NetworkPolicyState): void {
  const step = "validate network policy";
  checkName("policy id", policy.id, step);
  for (const side of ["source", "destination"] as const) {
    const selector = policy[side] as unknown as Record<string, unknown> | undefined;
    const byId = typeof selector?.container === "string" && (selector.container as string).length > 0;
    const label = selector?.label as { key?: unknown; value?: unknown } | undefined;
    const byLabel = typeof label?.key === "string" && label.key.length > 0 && typeof label.value === "string";
    if (!selector || byId === byLabel) {
      throw new AgentFailure("INVALID_REQUEST", step, `policy ${policy.id}: ${side} must be { container: ID } or { label: { key, value } }, not ${JSON.stringify(selector)}`);
    }
  }
  if (policy.protocol !== "tcp" && policy.protocol !== "udp") {
    throw new AgentFailure("INVALID_REQUEST", step, `policy ${policy.id}: protocol ${JSON.stringify(policy.protocol)} is not "tcp" or "udp"`);
  }
  const { from, to } = policy.ports ?? ({} as { from?: unknown; to?: unknown });
  const valid = (port: unknown) => Number.isInteger(port) && (port as number) >= 1 && (port as number) <= 65535;
  if (!valid(from) || !valid(to) || (from as number) > (to as number)) {
    throw new AgentFailure("INVALID_REQUEST", step, `policy ${policy.id}: ports ${JSON.stringify(policy.ports)} must be { from, to } with 1 <= from <= to <= 65535`);
  }
}

function failureOf(step: string, error: unknown): AgentFailure {
  if (error instanceof AgentFailure) return error;
  if (error instanceof NftError) {
    const code = error.code === "MISSING_BINARY" || error.code === "UNSUPPORTED" ? "UNSUPPORTED_CELL" : "INTERNAL";
    const detail = error.detail ? `\n${error.detail}` : "";
    return new AgentFailure(code, step, `${error.message}${detail}`, { cause: error });
  }
  if (error instanceof ConntrackError) {
    return new AgentFailure(error.code === "MISSING_BINARY" ? "UNSUPPORTED_CELL" : "INTERNAL", step, error.message, { cause: error });
  }
  return new AgentFailure("INTERNAL", step, (error as Error)?.message ?? String(error), { cause: error });
}

async function step<T>(name: string, action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    throw failureOf(name, error);
  }
}

export class RulesEngine {
  readonly root: string;
  private readonly nft: NftRunner;
  private readonly conntrack: ConntrackRunner;
  private readonly lock: <T>(action: () => Promise<T>) => Promise<T>;
  private readonly bridgeNetfilter: (bridge: string) => Promise<boolean>;
  private readonly log: (message: string) => void;

  constructor(options: RulesEngineOptions = {}) {
    this.root = options.root ?? NETWORK_ROOT;
    this.nft = options.nft ?? new ExecNftRunner();
    this.conntrack = options.conntrack ?? new ExecConntrackRunner();
    this.lock = options.lock ?? ((action) => withLock("network", action));
    this.bridgeNetfilter = options.bridgeNetfilter ?? probeBridgeNetfilter;
    this.log = options.log ?? ((message) => process.stderr.write(`${new Date().toISOString()} ${message}\n`));
  }

  private groupFile(name: string): string {
    return path.join(this.root, "groups", `${name}.json`);
  }

  private policyFile(id: string): string {
    return path.join(this.root, "policies", `${id}.json`);
  }

  /** Reads the state from disk; undefined until settings.json exists. */
  async loadState(): Promise<NetworkState | undefined> {
    const settings = await readJson<CellNetworkSettings>(path.join(this.root, "settings.json"));
    if (settings === undefined) return undefined;
    const containers = (await listJson<ContainerAttachment>(path.join(this.root, "containers"))).map((entry) => entry.value);
    const securityGroups: Record<string, SecurityGroupRule[]> = {};
    for (const { file, value } of await listJson<unknown>(path.join(this.root, "groups"))) {
      const result = validateSecurityGroupRules(value);
      if (!result.ok) throw new Error(`stored security group ${file} is invalid: ${result.failures.map((failure) => failure.reason).join("; ")}`);
      securityGroups[path.basename(file, ".json")] = result.rules;
    }
    const policies = (await listJson<NetworkPolicyState>(path.join(this.root, "policies"))).map((entry) => entry.value);
    return { settings: { ...settings, defaultSecurityGroups: settings.defaultSecurityGroups ?? [] }, containers, securityGroups, policies };
  }

  /** Applies the stored state; call it after attaching or detaching a container. Takes the network lock. */
  async apply(): Promise<void> {
    await this.lock(() => this.applyLocked());
  }

  /** Applies the stored state; the caller must hold the network lock. */
  async applyLocked(): Promise<void> {
    const state = await step("read network state", () => this.loadState());
    if (state === undefined) return;
    const bridgeNetfilter = await this.bridgeNetfilter(state.settings.bridge);
    if (!bridgeNetfilter) {
      this.log(`bridge netfilter is off for ${state.settings.bridge}: containers on it cannot reach each other, policies or not; set nf_call_iptables on the bridge`);
    }
    const transaction = await step("render ruleset", async () => renderRuleset(state, { bridgeNetfilter }));
    await step("apply ruleset", () => this.nft.apply(transaction));
    await step("revoke connections", () => this.revoke(state));
  }

  /** Deletes the conntrack entries of connections from containers that the new ruleset would not let start. */
  private async revoke(state: NetworkState): Promise<void> {
    const lists = computeAllowLists(state);
    const revoked: string[] = [];
    for (const entry of await this.conntrack.list()) {
      if (flowAllowed(lists, entry)) continue;
      if (await this.conntrack.delete(entry)) revoked.push(`${entry.protocolName} ${entry.source}->${entry.destination}:${entry.destinationPort ?? entry.type ?? ""}`);
    }
    if (revoked.length) this.log(`revoked ${revoked.length} connection(s) that the new ruleset no longer allows`);
  }

  /** Replaces a stored file and applies; puts the old content back when applying fails. */
  private async replaceAndApply(file: string, content: string | undefined): Promise<void> {
    const previous = await fs.readFile(file, "utf8").catch(() => undefined);
    await step("write network state", async () => {
      if (content === undefined) {
        await fs.rm(file, { force: true });
      } else {
        await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await writeFileAtomic(file, content);
      }
    });
    try {
      await this.applyLocked();
    } catch (error) {
      if (previous === undefined) await fs.rm(file, { force: true });
      else await writeFileAtomic(file, previous);
      throw error;
    }
  }

  async putSecurityGroup(params: { name: string; rules: unknown }): Promise<SecurityGroupObservation> {
    const name = checkName("security group name", params?.name, "validate security group");
    const result = validateSecurityGroupRules(params.rules);
    if (!result.ok) {
      throw new AgentFailure("INVALID_REQUEST", "validate security group", `security group ${name}: ${result.failures.map((failure) => failure.reason).join("; ")}`);
    }
    return this.lock(async () => {
      await this.replaceAndApply(this.groupFile(name), `${JSON.stringify(result.rules, null, 2)}\n`);
      return (await this.observeSecurityGroup(name)) as SecurityGroupObservation;
    });
  }

  async inspectSecurityGroup(params: { name: string }): Promise<SecurityGroupObservation | null> {
    const name = checkName("security group name", params?.name, "validate security group");
    return this.lock(() => this.observeSecurityGroup(name));
  }

  async deleteSecurityGroup(params: { name: string }): Promise<{ existed: boolean }> {
    const name = checkName("security group name", params?.name, "validate security group");
    return this.lock(async () => {
      const file = this.groupFile(name);
      const existed = (await readJson<unknown>(file)) !== undefined;
      if (existed) await this.replaceAndApply(file, undefined);
      return { existed };
    });
  }

  async putPolicy(policy: NetworkPolicyState): Promise<PolicyObservation> {
    checkPolicy(policy);
    const stored: NetworkPolicyState = { id: policy.id, source: policy.source, destination: policy.destination, protocol: policy.protocol, ports: policy.ports };
    return this.lock(async () => {
      await this.replaceAndApply(this.policyFile(policy.id), `${JSON.stringify(stored, null, 2)}\n`);
      return (await this.observePolicy(policy.id)) as PolicyObservation;
    });
  }

  async inspectPolicy(params: { id: string }): Promise<PolicyObservation | null> {
    const id = checkName("policy id", params?.id, "validate network policy");
    return this.lock(() => this.observePolicy(id));
  }

  async deletePolicy(params: { id: string }): Promise<{ existed: boolean }> {
    const id = checkName("policy id", params?.id, "validate network policy");
    return this.lock(async () => {
      const file = this.policyFile(id);
      const existed = (await readJson<unknown>(file)) !== undefined;
      if (existed) await this.replaceAndApply(file, undefined);
      return { existed };
    });
  }

  /** Reads the live tables and returns, with the rendered state, why they differ for one object. */
  private async drift(state: NetworkState, reasonsFor: (live: ReturnType<typeof readLiveRuleset>, lists: ReturnType<typeof computeAllowLists>) => string[]): Promise<string[]> {
    const live = readLiveRuleset(await step("list ruleset", () => this.nft.list([INET_TABLE, BRIDGE_TABLE])));
    const bridgeNetfilter = await this.bridgeNetfilter(state.settings.bridge);
    const desired = renderRuleset(state, { bridgeNetfilter });
    const lists = computeAllowLists(state);
    return [...structuralDrift(desired, live), ...reasonsFor(live, lists)];
  }

  private async observeSecurityGroup(name: string): Promise<SecurityGroupObservation | null> {
    const state = await step("read network state", () => this.loadState());
    const stored = await step("read network state", () => readJson<unknown>(this.groupFile(name)));
    if (stored === undefined) return null;
    const validated = validateSecurityGroupRules(stored);
    const rules = validated.ok ? validated.rules : [];
    // Before the plumbing writes settings.json there is no bridge, so nothing can drift.
    if (state === undefined) return { name, rules, enforced: true };
    const reasons = await this.drift(state, (live, lists) => securityGroupDrift(name, rules, lists, state.settings.defaultSecurityGroups, live));
    return reasons.length ? { name, rules, enforced: false, drift: reasons.join("; ") } : { name, rules, enforced: true };
  }

  private async observePolicy(id: string): Promise<PolicyObservation | null> {
    const state = await step("read network state", () => this.loadState());
    const policy = await step("read network state", () => readJson<NetworkPolicyState>(this.policyFile(id)));
    if (policy === undefined) return null;
    if (state === undefined) return { ...policy, enforced: true };
    const reasons = await this.drift(state, (live, lists) => policyDrift(policy, lists, live));
    return reasons.length ? { ...policy, enforced: false, drift: reasons.join("; ") } : { ...policy, enforced: true };
  }
}

let defaultEngine: RulesEngine | undefined;

function engine(): RulesEngine {
  defaultEngine ??= new RulesEngine();
  return defaultEngine;
}

/**
 * Renders and applies the cell's stored network state; does nothing before
 * settings.json exists. Takes the "network" lock, so a caller that already
 * holds it must call engine().applyLocked() instead.
 */
export function applyNetworkState(): Promise<void> {
  return engine().apply();
}

/** Applies the stored network state while the caller holds the "network" lock. */
export function applyNetworkStateLocked(): Promise<void> {
  return engine().applyLocked();
}

/** The agent methods of security groups and policies, for the server's dispatch table. */
export const networkRuleHandlers = {
  "securityGroup.put": (params: { name: string; rules: SecurityGroupRule[] }) => engine().putSecurityGroup(params),
  "securityGroup.inspect": (params: { name: string }) => engine().inspectSecurityGroup(params),
  "securityGroup.delete": (params: { name: string }) => engine().deleteSecurityGroup(params),
  "policy.put": (params: NetworkPolicyState) => engine().putPolicy(params),
  "policy.inspect": (params: { id: string }) => engine().inspectPolicy(params),
  "policy.delete": (params: { id: string }) => engine().deletePolicy(params),
};
