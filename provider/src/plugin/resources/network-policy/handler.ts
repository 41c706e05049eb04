/**
 * The NetworkPolicy resource: allows traffic from a source container (or
 * label) to a destination container (or label) on a protocol and port
 * range. Without a policy, containers on a cell cannot reach each other.
 */
import { randomBytes } from "node:crypto";

import { validatePolicyInputs } from "../../../common/policy-spec";
import type { PolicyObservation } from "../../../common/protocol";
import type { CellConfig } from "../../../transport/cell-config";
import { DiffResult, PropertyMap, ResourceHandler, UNKNOWN } from "../../resource";
import { containsUnknowns, unwrapSecrets } from "../../wire";
import { sameValue } from "../compare";
import { sessionFor } from "../session";

export const NETWORK_POLICY_TOKEN = "cellfleet:index:NetworkPolicy";

const INPUT_NAMES = ["source", "sourceLabels", "destination", "destinationLabels", "protocol", "ports"];

function policyIdFor(urn: string): string {
  const name = urn.split("::").pop() ?? "policy";
  const base = name.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "policy";
  return `${base}-${randomBytes(4).toString("hex")}`;
}

function outputsFor(inputs: PropertyMap, observation: PolicyObservation): PropertyMap {
  const outputs: PropertyMap = { ...inputs, enforced: observation.enforced };
  if (observation.drift !== undefined) outputs.drift = observation.drift;
  else delete outputs.drift;
  return outputs;
}

export function createNetworkPolicyHandler(getConfig: () => CellConfig | undefined): ResourceHandler {
  function validPolicy(id: string, inputs: PropertyMap) {
    const result = validatePolicyInputs(id, unwrapSecrets(inputs).values);
    if (!result.ok) throw new Error(result.failures.map((failure) => failure.reason).join("; "));
    return result.policy;
  }

  return {
    token: NETWORK_POLICY_TOKEN,

    async check(_olds, news) {
      if (containsUnknowns(news)) return { inputs: news, failures: [] };
      const result = validatePolicyInputs("check", unwrapSecrets(news).values);
      return { inputs: news, failures: result.ok ? [] : result.failures };
    },

    async diff(_id, olds, news) {
      const oldValues = unwrapSecrets(olds).values as Record<string, unknown>;
      const newValues = unwrapSecrets(news).values as Record<string, unknown>;
      const detailedDiff: DiffResult["detailedDiff"] = {};
      for (const property of INPUT_NAMES) {
        if (!sameValue(oldValues[property], newValues[property])) detailedDiff[property] = { kind: "update", inputDiff: true };
      }
      if (oldValues.enforced === false) detailedDiff.enforced = { kind: "update", inputDiff: false };
      return { changes: Object.keys(detailedDiff).length > 0, replaces: [], detailedDiff, deleteBeforeReplace: false };
    },

    async create(inputs, preview, context) {
      if (preview) return { id: "", outputs: { ...inputs, enforced: UNKNOWN } };
      const id = policyIdFor(context.urn);
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("policy.put", validPolicy(id, inputs));
      return { id, outputs: outputsFor(inputs, observation) };
    },

    async read(id, state, inputs, context) {
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("policy.inspect", { id });
      if (!observation) return null;
      const baseInputs = Object.keys(inputs).length > 0 ? inputs : Object.fromEntries(Object.entries(state).filter(([key]) => INPUT_NAMES.includes(key)));
      return { id, outputs: outputsFor({ ...state, ...baseInputs }, observation), inputs: baseInputs };
    },

    async update(id, olds, news, preview, context) {
      if (preview) return { outputs: { ...olds, ...news, enforced: UNKNOWN } };
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("policy.put", validPolicy(id, news));
      return { outputs: outputsFor({ ...olds, ...news }, observation) };
    },

    async delete(id, _outputs, context) {
      const cell = await sessionFor(getConfig, context);
      await cell.agent.call("policy.delete", { id });
    },
  };
}
