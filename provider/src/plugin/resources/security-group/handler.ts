/**
 * The SecurityGroup resource: a named set of egress allow rules in the
 * Cloud Foundry application security group format, stored on the cell and
 * enforced for every container bound to it. Rules come inline (`rules`) or
 * from an existing CF rules file (`rulesFile`).
 */
import path from "node:path";

import { loadCfRulesFile, validateSecurityGroupRules, type RuleValidation } from "../../../common/asg";
import type { SecurityGroupRule } from "../../../common/network-state";
import type { SecurityGroupObservation } from "../../../common/protocol";
import type { CellConfig } from "../../../transport/cell-config";
import { CheckFailure, DiffResult, PropertyMap, ResourceHandler, UNKNOWN } from "../../resource";
import { containsUnknowns, unwrapSecrets } from "../../wire";
import { sameValue } from "../compare";
import { sessionFor } from "../session";

export const SECURITY_GROUP_TOKEN = "cellfleet:index:SecurityGroup";

const NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** Derives the group's name on the cell from the resource name, so containers can refer to it by a stable name. */
export function securityGroupNameFor(urn: string): string {
  const name = urn.split("::").pop() ?? "group";
  return name.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63) || "group";
}

/** Validates the rules from inputs: inline rules, or the file named by rulesFile (relative to the program's directory). */
async function validateInputRules(values: Record<string, unknown>): Promise<RuleValidation> {
  const hasRules = values.rules !== undefined;
  const hasFile = values.rulesFile !== undefined;
  if (hasRules === hasFile) {
    return {
      ok: false,
      failures: [{ property: "rules", reason: "give exactly one of rules (a list of CF security group rules) or rulesFile (the path of a CF rules JSON file)" }],
    };
  }
  if (hasRules) return validateSecurityGroupRules(values.rules);
  return loadCfRulesFile(path.resolve(process.cwd(), String(values.rulesFile)));
}

function outputsFor(inputs: PropertyMap, observation: SecurityGroupObservation): PropertyMap {
  const outputs: PropertyMap = { ...inputs, name: observation.name, enforcedRules: observation.rules as never, enforced: observation.enforced };
  if (observation.drift !== undefined) outputs.drift = observation.drift;
  else delete outputs.drift;
  return outputs;
}

export function createSecurityGroupHandler(getConfig: () => CellConfig | undefined): ResourceHandler {
  async function validRules(inputs: PropertyMap): Promise<SecurityGroupRule[]> {
    const result = await validateInputRules(unwrapSecrets(inputs).values as Record<string, unknown>);
    if (!result.ok) throw new Error(result.failures.map((failure) => failure.reason).join("; "));
    return result.rules;
  }

  return {
    token: SECURITY_GROUP_TOKEN,

    async check(_olds, news) {
      const values = unwrapSecrets(news).values as Record<string, unknown>;
      if (containsUnknowns(news)) return { inputs: news, failures: [] };
      const failures: CheckFailure[] = [];
      if (values.name !== undefined && !NAME_PATTERN.test(String(values.name))) {
        failures.push({ property: "name", reason: `name ${JSON.stringify(values.name)} must be 1 to 63 lowercase letters, digits or hyphens` });
      }
      const result = await validateInputRules(values);
      if (!result.ok) failures.push(...result.failures);
      return { inputs: news, failures };
    },

    async diff(_id, olds, news) {
      const oldValues = unwrapSecrets(olds).values as Record<string, unknown>;
      const newValues = unwrapSecrets(news).values as Record<string, unknown>;
      const detailedDiff: DiffResult["detailedDiff"] = {};
      const replaces: string[] = [];
      if (newValues.name !== undefined && newValues.name !== oldValues.name) {
        detailedDiff.name = { kind: "update-replace", inputDiff: true };
        replaces.push("name");
      }
      for (const property of ["rules", "rulesFile"]) {
        if (!sameValue(oldValues[property], newValues[property])) detailedDiff[property] = { kind: "update", inputDiff: true };
      }
      // A file's contents may change while its path stays the same.
      if (newValues.rulesFile !== undefined && !containsUnknowns(news)) {
        const validated = await validateInputRules(newValues);
        if (validated.ok && !sameValue(validated.rules, oldValues.enforcedRules)) detailedDiff.rulesFile = { kind: "update", inputDiff: true };
      }
      // Rules deleted from the cell by hand: refresh reports enforced false, and an update puts them back.
      if (oldValues.enforced === false) detailedDiff.enforced = { kind: "update", inputDiff: false };
      return { changes: Object.keys(detailedDiff).length > 0, replaces, detailedDiff, deleteBeforeReplace: true };
    },

    async create(inputs, preview, context) {
      const name = (unwrapSecrets(inputs).values.name as string | undefined) ?? securityGroupNameFor(context.urn);
      if (preview) return { id: "", outputs: { ...inputs, name, enforcedRules: UNKNOWN, enforced: UNKNOWN } };
      const rules = await validRules(inputs);
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("securityGroup.put", { name, rules });
      return { id: name, outputs: outputsFor(inputs, observation) };
    },

    async read(id, state, inputs, context) {
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("securityGroup.inspect", { name: id });
      if (!observation) return null;
      const baseInputs = Object.keys(inputs).length > 0 ? inputs : Object.fromEntries(Object.entries(state).filter(([key]) => ["name", "rules", "rulesFile"].includes(key)));
      return { id, outputs: outputsFor({ ...state, ...baseInputs }, observation), inputs: baseInputs };
    },

    async update(id, olds, news, preview, context) {
      if (preview) return { outputs: { ...olds, ...news, enforcedRules: UNKNOWN, enforced: UNKNOWN } };
      const rules = await validRules(news);
      const cell = await sessionFor(getConfig, context);
      const observation = await cell.agent.call("securityGroup.put", { name: id, rules });
      return { outputs: outputsFor({ ...olds, ...news }, observation) };
    },

    async delete(id, _outputs, context) {
      const cell = await sessionFor(getConfig, context);
      await cell.agent.call("securityGroup.delete", { name: id });
    },
  };
}
