/**
 * NetworkPolicy inputs: traffic from one container, or every container with
 * a label, to another on a protocol and port range, as `cf add-network-policy
 * SOURCE DEST --protocol tcp --port 8080-8090` allows in Cloud Foundry.
 */
import { z } from "zod";

import type { EndpointSelector, NetworkPolicyState } from "./network-state";

const PORT_RANGE_PATTERN = /^(\d{1,5})(?:-(\d{1,5}))?$/;

const labelsSchema = z.record(z.string(), z.string()).refine((labels) => Object.keys(labels).length === 1, {
  message: 'must name exactly one label, such as { app: "web" }',
});

export const policyInputsSchema = z
  .object({
    source: z.string().min(1).optional(),
    sourceLabels: labelsSchema.optional(),
    destination: z.string().min(1).optional(),
    destinationLabels: labelsSchema.optional(),
    protocol: z.enum(["tcp", "udp"], { message: 'protocol must be "tcp" or "udp"' }).default("tcp"),
    ports: z.union([z.string(), z.number()]).transform((value, context) => {
      const text = String(value).trim();
      const match = PORT_RANGE_PATTERN.exec(text);
      const from = match ? Number(match[1]) : NaN;
      const to = match?.[2] !== undefined ? Number(match[2]) : from;
      if (!match || from < 1 || to > 65535) {
        context.addIssue({ code: "custom", message: `ports ${JSON.stringify(value)} must be a port or a range "FROM-TO" from 1 to 65535, such as "8080-8090"` });
        return z.NEVER;
      }
      if (from > to) {
        context.addIssue({ code: "custom", message: `ports ${JSON.stringify(value)} is a reversed range: write the lower port first, "${to}-${from}"` });
        return z.NEVER;
      }
      return { from, to };
    }),
  })
  .strict()
  .superRefine((value, context) => {
    for (const end of ["source", "destination"] as const) {
      const byId = value[end] !== undefined;
      const byLabel = value[`${end}Labels`] !== undefined;
      if (byId === byLabel) {
        context.addIssue({ code: "custom", path: [end], message: `give exactly one of ${end} (a container id) or ${end}Labels (one label that selects containers)` });
      }
    }
  });

export type PolicyInputs = z.input<typeof policyInputsSchema>;

function selector(id: string | undefined, labels: Record<string, string> | undefined): EndpointSelector {
  if (id !== undefined) return { container: id };
  const [key, value] = Object.entries(labels!)[0];
  return { label: { key, value } };
}

/** Validates policy inputs and returns the state the agent enforces, or one failure per problem. */
export function validatePolicyInputs(
  id: string,
  inputs: unknown,
): { ok: true; policy: NetworkPolicyState } | { ok: false; failures: { property: string; reason: string }[] } {
  const result = policyInputsSchema.safeParse(inputs);
  if (!result.success) {
    return { ok: false, failures: result.error.issues.map((issue) => ({ property: issue.path.map(String).join(".") || "ports", reason: issue.message })) };
  }
  const value = result.data;
  return {
    ok: true,
    policy: {
      id,
      source: selector(value.source, value.sourceLabels),
      destination: selector(value.destination, value.destinationLabels),
      protocol: value.protocol,
      ports: value.ports,
    },
  };
}
