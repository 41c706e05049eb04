/**
 * The Container resource: CRUD on a cell through its agent. Preview never
 * touches the cell; every other operation names the cell and the container
 * in its errors.
 */
import { randomBytes } from "node:crypto";

import { validateContainerInputs } from "../../../common/container-spec";
import type { ContainerObservation } from "../../../common/protocol";
import { cpuSharesForMemory } from "../../../common/resources";
import { formatByteSize, parseByteSize } from "../../../common/units";
import type { CellConfig } from "../../../transport/cell-config";
import {
  CheckFailure,
  DiffKind,
  DiffResult,
  OperationContext,
  PropertyMap,
  PropertyValue,
  ResourceHandler,
  Secret,
  UNKNOWN,
} from "../../resource";
import { containsUnknowns, unwrapSecrets } from "../../wire";
import { sameValue } from "../compare";
import { sessionFor } from "../session";
import { describeImageProblem, ensureImageOnCell, imageDigest } from "./image";

export const CONTAINER_TOKEN = "cellfleet:index:Container";

/** Inputs whose change needs a new container: they are fixed when the container starts. */
const REPLACE_ON_CHANGE = [
  "command",
  "env",
  "workingDir",
  "user",
  "hostname",
  "diskQuota",
  "privileged",
  "seccompDeny",
  // NOTE: the network is attached when the container starts; changing these
  // replaces the container, though rebinding groups in place would be possible.
  "ports",
  "bandwidth",
  "securityGroups",
  "labels",
] as const;

/** Values that the agent applies for inputs left out, so leaving one out matches its recorded value. */
const INPUT_DEFAULTS: Partial<Record<(typeof REPLACE_ON_CHANGE)[number], unknown>> = {
  env: {},
  workingDir: "/",
  user: "0",
  privileged: false,
  seccompDeny: [],
  ports: [],
  securityGroups: [],
  labels: {},
};

/** Stand-ins for required inputs that are unknown during preview. */
const UNKNOWN_REQUIRED_PLACEHOLDERS: Record<string, unknown> = { image: "unknown", command: ["unknown"] };

/** Outputs computed on the cell, unknown during a preview of a create. */
const COMPUTED_OUTPUTS = ["containerId", "status", "pid", "startedAt", "imageDigest", "hostname", "address", "publishedPorts"] as const;

/** Builds a container id from the resource name plus a random suffix, so a replacement never collides with the container it replaces. */
export function containerIdFor(urn: string): string {
  const name = urn.split("::").pop() ?? "container";
  const base = name.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "container";
  return `${base}-${randomBytes(4).toString("hex")}`;
}

function isSecret(value: PropertyValue | undefined): boolean {
  if (value instanceof Secret) return true;
  if (value && typeof value === "object" && !Array.isArray(value)) {
    return Object.values(value as Record<string, PropertyValue>).some(isSecret);
  }
  return false;
}

/** Wraps value as a secret when its input was, so `pulumi stack output` and state never show it in clear. */
function keepSecret(value: PropertyValue, input: PropertyValue | undefined): PropertyValue {
  return isSecret(input) ? new Secret(value) : value;
}

function plainInputs(inputs: PropertyMap): Record<string, unknown> {
  return unwrapSecrets(inputs).values as Record<string, unknown>;
}


/** Builds the outputs of a container: its inputs as given plus what the cell reports. */
function outputsFor(inputs: PropertyMap, observation: ContainerObservation): PropertyMap {
  const outputs: PropertyMap = { ...inputs };
  outputs.env = keepSecret(observation.env, inputs.env);
  outputs.containerId = observation.id;
  outputs.status = observation.status;
  outputs.pid = observation.pid;
  outputs.startedAt = observation.startedAt;
  outputs.imageDigest = observation.imageDigest;
  outputs.memoryBytes = observation.memoryBytes;
  outputs.cpuShares = observation.cpuShares;
  outputs.hostname = observation.hostname;
  if (observation.reason !== undefined) outputs.reason = observation.reason;
  else delete outputs.reason;
  if (observation.address !== undefined) {
    outputs.address = observation.address;
    outputs.networkAttached = true;
  } else {
    // networkAttached stays from the state, so a lost address shows as drift.
    delete outputs.address;
  }
  // Kept apart from the ports input, whose cellPort may be left to the cell.
  if (observation.ports !== undefined) outputs.publishedPorts = observation.ports as unknown as PropertyValue;
  return outputs;
}

export function createContainerHandler(getConfig: () => CellConfig | undefined): ResourceHandler {
  const session = (context: OperationContext) => sessionFor(getConfig, context);

  return {
    token: CONTAINER_TOKEN,

    async check(_olds, news) {
      const failures: CheckFailure[] = [];
      // Unknown values arrive during preview when inputs depend on other
      // resources, and they are checked at apply time. A required input that
      // is unknown gets a placeholder, so only the known values are judged.
      const known = Object.fromEntries(Object.entries(plainInputs(news)).filter(([, value]) => !containsUnknowns(value as PropertyValue)));
      const candidate: Record<string, unknown> = { ...known };
      for (const [name, placeholder] of Object.entries(UNKNOWN_REQUIRED_PLACEHOLDERS)) {
        if (candidate[name] === undefined && news[name] !== undefined) candidate[name] = placeholder;
      }
      const result = validateContainerInputs(candidate);
      if (!result.ok) failures.push(...result.failures);
      if (typeof known.image === "string" && known.image.length > 0) {
        const problem = await describeImageProblem(known.image);
        if (problem) failures.push({ property: "image", reason: problem });
      }
      return { inputs: news, failures };
    },

    async diff(_id, olds, news) {
      const detailedDiff: DiffResult["detailedDiff"] = {};
      const replaces: string[] = [];
      const oldValues = plainInputs(olds);
      const newValues = plainInputs(news);

      for (const property of REPLACE_ON_CHANGE) {
        // An input left out means its default, which the outputs record as a value.
        let before = oldValues[property] ?? INPUT_DEFAULTS[property];
        const after = newValues[property] === UNKNOWN ? UNKNOWN : (newValues[property] ?? INPUT_DEFAULTS[property]);
        // Without an explicit hostname the container id is the hostname.
        if (property === "hostname" && after === undefined && before === oldValues.containerId) before = undefined;
        if (after === UNKNOWN || !sameValue(before, after)) {
          let kind: DiffKind = "update-replace";
          if (before === undefined) kind = "add-replace";
          else if (after === undefined) kind = "delete-replace";
          detailedDiff[property] = { kind, inputDiff: true };
          replaces.push(property);
        }
      }

      if (newValues.image === UNKNOWN) {
        detailedDiff.image = { kind: "update-replace", inputDiff: true };
        replaces.push("image");
      } else if (oldValues.image !== newValues.image || typeof newValues.image === "string") {
        const digest = typeof newValues.image === "string" ? await imageDigest(newValues.image).catch(() => undefined) : undefined;
        if (digest !== oldValues.imageDigest) {
          detailedDiff.image = { kind: "update-replace", inputDiff: true };
          replaces.push("image");
        } else if (oldValues.image !== newValues.image) {
          detailedDiff.image = { kind: "update", inputDiff: true };
        }
      }

      const newMemory = newValues.memory === UNKNOWN ? undefined : parseByteSize((newValues.memory as string | number | undefined) ?? "256MiB");
      const liveMemory = oldValues.memoryBytes as number | undefined;
      if (newValues.memory === UNKNOWN || newMemory !== liveMemory) detailedDiff.memory = { kind: "update", inputDiff: true };

      // A network found broken by refresh (veth, address or limits gone) is
      // repaired the same way as a stopped container: by a new container.
      if (oldValues.networkAttached === true && oldValues.address === undefined) {
        detailedDiff.address = { kind: "update-replace", inputDiff: false };
        replaces.push("address");
      }

      // A container found stopped by refresh is started anew, which is how `pulumi up` repairs it.
      if (oldValues.status === "stopped") {
        detailedDiff.status = { kind: "update-replace", inputDiff: false };
        replaces.push("status");
      }

      return { changes: Object.keys(detailedDiff).length > 0, replaces, detailedDiff, deleteBeforeReplace: false };
    },

    async create(inputs, preview, context) {
      const values = plainInputs(inputs);
      if (preview) {
        const outputs: PropertyMap = { ...inputs };
        for (const name of COMPUTED_OUTPUTS) outputs[name] = UNKNOWN;
        const memory = values.memory === UNKNOWN ? undefined : parseByteSize((values.memory as string | number | undefined) ?? "256MiB");
        outputs.memoryBytes = memory ?? UNKNOWN;
        outputs.cpuShares = memory !== undefined ? cpuSharesForMemory(memory) : UNKNOWN;
        return { id: "", outputs };
      }

      const validation = validateContainerInputs(values);
      if (!validation.ok) throw new Error(validation.failures.map((failure) => failure.reason).join("; "));
      const { image, ...spec } = validation.spec;
      const cell = await session(context);
      const digest = await imageDigest(image);
      await ensureImageOnCell(cell, image, digest);
      const id = containerIdFor(context.urn);
      context.log.info(`creating container ${id} on ${cell.connection.label}`);
      const config = getConfig()!;
      const network = { subnet: config.containerSubnet, defaultSecurityGroups: config.defaultSecurityGroups };
      const observation = await cell.agent.call("container.create", { id, imageDigest: digest, spec, network });
      return { id, outputs: outputsFor(inputs, observation) };
    },

    async read(id, state, inputs, context) {
      const cell = await session(context);
      const observation = await cell.agent.call("container.inspect", { id });
      if (!observation) return null;
      const baseInputs = Object.keys(inputs).length > 0 ? inputs : pickInputs(state);
      const observedInputs: PropertyMap = { ...baseInputs };
      const declared = parseByteSize((plainInputs(baseInputs).memory as string | number | undefined) ?? "256MiB");
      // A limit changed by hand on the cell shows up as a changed input, so the next `pulumi up` writes it back.
      if (declared !== observation.memoryBytes) observedInputs.memory = formatByteSize(observation.memoryBytes);
      const declaredHostname = plainInputs(baseInputs).hostname;
      if (declaredHostname !== undefined && declaredHostname !== observation.hostname) observedInputs.hostname = observation.hostname;
      return { id, outputs: outputsFor({ ...state, ...observedInputs }, observation), inputs: observedInputs };
    },

    async update(id, olds, news, preview, context) {
      const newValues = plainInputs(news);
      const memory = newValues.memory === UNKNOWN ? undefined : parseByteSize((newValues.memory as string | number | undefined) ?? "256MiB");
      if (preview) {
        const outputs: PropertyMap = { ...olds, ...news };
        outputs.memoryBytes = memory ?? UNKNOWN;
        outputs.cpuShares = memory !== undefined ? cpuSharesForMemory(memory) : UNKNOWN;
        return { outputs };
      }
      if (memory === undefined) throw new Error(`memory ${JSON.stringify(newValues.memory)} is not a size`);
      const cell = await session(context);
      const observation = await cell.agent.call("container.update", { id, memory });
      return { outputs: outputsFor({ ...olds, ...news }, observation) };
    },

    async delete(id, _outputs, context) {
      const cell = await session(context);
      const { existed } = await cell.agent.call("container.delete", { id });
      if (!existed) context.log.warn(`container ${id} was already gone from ${cell.connection.label}`);
    },
  };
}

/** Every Container input: the ones that replace the container, plus image and memory. */
const INPUT_NAMES: string[] = ["image", "memory", ...REPLACE_ON_CHANGE];

/** Recovers inputs from state, for a read during import when the engine has no inputs. */
function pickInputs(state: PropertyMap): PropertyMap {
  return Object.fromEntries(Object.entries(state).filter(([name]) => INPUT_NAMES.includes(name)));
}
