/**
 * The Container resource's inputs: one zod schema, used by the provider at
 * `pulumi preview` time and again by the agent before it touches the cell.
 */
import { z } from "zod";

import { containerNetworkShape, RATE_EXAMPLES } from "./network-spec";
import { cpuSharesForMemory } from "./resources";
import { X86_64_SYSCALLS } from "./syscalls";
import { parseByteSize, SIZE_EXAMPLES } from "./units";

/** The smallest memory limit accepted: below this the kernel OOM-kills Node-free shells too. */
export const MIN_MEMORY_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MEMORY = "256MiB";

const ID_PATTERN = /^(\d+)(?::(\d+))?$/;
const NAME_PATTERN = /^[a-z_][a-z0-9_.-]*$/i;
const HOSTNAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;

function byteSize(field: string, options: { min: number }) {
  return z.union([z.string(), z.number()]).transform((value, context) => {
    const bytes = parseByteSize(value);
    if (bytes === undefined) {
      const negative = typeof value === "number" ? value < 0 : /^\s*-/.test(value);
      context.addIssue({
        code: "custom",
        message: negative
          ? `${field} ${JSON.stringify(value)} is negative: give a positive size such as ${SIZE_EXAMPLES}`
          : `${field} ${JSON.stringify(value)} is not a size: use a number with a unit, such as ${SIZE_EXAMPLES}`,
      });
      return z.NEVER;
    }
    if (bytes < options.min) {
      context.addIssue({
        code: "custom",
        message: `${field} ${JSON.stringify(value)} is below the minimum of ${options.min} bytes: raise it`,
      });
      return z.NEVER;
    }
    return bytes;
  });
}

/** The Container inputs as the user writes them, after the plugin has unwrapped secrets. */
export const containerInputsSchema = z
  .object({
    image: z.string().min(1, "image is empty: give the path of a rootfs tarball or an OCI image archive"),
    command: z
      .array(z.string())
      .min(1, 'command is empty: give the program and its arguments, for example ["/bin/sh", "-c", "sleep 1000"]'),
    env: z
      .record(z.string(), z.string())
      .default({})
      .superRefine((env, context) => {
        for (const name of Object.keys(env)) {
          if (!ENV_NAME_PATTERN.test(name)) {
            context.addIssue({
              code: "custom",
              path: [name],
              message: `env name ${JSON.stringify(name)} is invalid: use letters, digits and underscores, not starting with a digit`,
            });
          }
        }
      }),
    workingDir: z
      .string()
      .default("/")
      .refine((dir) => dir.startsWith("/") && !dir.split("/").includes(".."), {
        message: 'workingDir must be an absolute path inside the container without "..", such as "/home/app"',
      })
      // /proc/self/fd/N names whatever descriptor N is at start-up; with a
      // leaked host descriptor that is a way out of the rootfs (runc CVE-2024-21626).
      .refine((dir) => !/^\/(proc|sys|dev)(\/|$)/.test(dir), {
        message: "workingDir must not be under /proc, /sys or /dev: choose a directory of the image, such as /home/app",
      }),
    user: z
      .string()
      .default("0")
      .refine((user) => ID_PATTERN.test(user) || NAME_PATTERN.test(user), {
        message: 'user must be "UID", "UID:GID" or a user name from the image\'s /etc/passwd, such as "1000:1000" or "app"',
      }),
    hostname: z
      .string()
      .refine((name) => HOSTNAME_PATTERN.test(name), {
        message: "hostname must be 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen",
      })
      .optional(),
    memory: byteSize("memory", { min: MIN_MEMORY_BYTES }).prefault(DEFAULT_MEMORY),
    diskQuota: byteSize("diskQuota", { min: 16 * 1024 * 1024 }).optional(),
    privileged: z.boolean().default(false),
    seccompDeny: z
      .array(z.string())
      .default([])
      .superRefine((names, context) => {
        names.forEach((name, index) => {
          if (!(name in X86_64_SYSCALLS)) {
            context.addIssue({
              code: "custom",
              path: [index],
              message: `seccompDeny[${index}] ${JSON.stringify(name)} is not a system call this filter knows: use one of ${Object.keys(X86_64_SYSCALLS).sort().join(", ")}`,
            });
          }
        });
      }),
    ...containerNetworkShape,
  })
  .strict();

export type ContainerInputs = z.input<typeof containerInputsSchema>;
export type ContainerSpec = z.output<typeof containerInputsSchema>;

export interface ValidationFailure {
  property: string;
  reason: string;
}

/** Validates inputs and returns either the normalised spec or one failure per problem. */
export function validateContainerInputs(
  inputs: unknown,
): { ok: true; spec: ContainerSpec } | { ok: false; failures: ValidationFailure[] } {
  // reportInput lets describeIssue tell a missing value from one of the wrong type.
  const result = containerInputsSchema.safeParse(inputs, { reportInput: true });
  if (result.success) return { ok: true, spec: result.data };
  return { ok: false, failures: result.error.issues.map(describeIssue) };
}

function describeIssue(issue: z.core.$ZodIssue): ValidationFailure {
  const property = issue.path.map(String).join(".");
  switch (issue.code) {
    case "unrecognized_keys":
      return {
        property: issue.keys.join(", "),
        reason: `unknown input ${issue.keys.map((key) => JSON.stringify(key)).join(", ")}: check the spelling against the Container schema`,
      };
    case "invalid_type":
      if (issue.input === undefined) return { property, reason: `${property} is required` };
      if (issue.expected === "int") return { property, reason: `${property} must be a whole number, not ${JSON.stringify(issue.input)}` };
      return { property, reason: `${property} must be ${issue.expected}, not ${typeof issue.input}` };
    case "invalid_union":
      if (property === "bandwidth.rate") return { property, reason: `${property} must be a string such as ${RATE_EXAMPLES}, or a number of bits per second` };
      return { property, reason: `${property} must be a string such as ${SIZE_EXAMPLES}, or a number of bytes` };
    default:
      return { property, reason: issue.message };
  }
}

/** Computes the resource limits of a spec, as the agent writes them into cgroups. */
export function limitsFor(spec: ContainerSpec): { memoryBytes: number; cpuShares: number } {
  return { memoryBytes: spec.memory, cpuShares: cpuSharesForMemory(spec.memory) };
}
