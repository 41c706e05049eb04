/**
 * The Pulumi package schema for cellfleet, returned by GetSchema and read by
 * scripts/gen-sdk.ts. It is a typed constant rather than a JSON file so the
 * plugin never reads files to respond to the engine. Unit tests check it against
 * cellConfigSchema, container-spec.ts and provider/package.json.
 */

/** The subset of the Pulumi package schema format that cellfleet uses. */
export type PrimitiveType = "string" | "integer" | "number" | "boolean";

export interface TypeReference {
  type?: PrimitiveType | "array" | "object";
  /** A reference such as "#/types/cellfleet:index:Bastion". */
  $ref?: string;
  items?: TypeReference;
  additionalProperties?: TypeReference;
}

export interface PropertySpec extends TypeReference {
  description: string;
  secret?: boolean;
  default?: string | number | boolean;
}

export interface ObjectTypeSpec {
  type: "object";
  description: string;
  properties: Record<string, PropertySpec>;
  required?: string[];
}

export interface EnumTypeSpec {
  type: "string";
  description: string;
  enum: { value: string; description: string }[];
}

export interface ResourceSpec {
  description: string;
  properties: Record<string, PropertySpec>;
  required: string[];
  inputProperties: Record<string, PropertySpec>;
  requiredInputs: string[];
}

export interface PackageSchema {
  name: string;
  displayName: string;
  version: string;
  description: string;
  license: string;
  keywords: string[];
  config: { variables: Record<string, PropertySpec>; defaults: string[] };
  provider: { description: string; inputProperties: Record<string, PropertySpec>; requiredInputs: string[] };
  types: Record<string, ObjectTypeSpec | EnumTypeSpec>;
  resources: Record<string, ResourceSpec>;
  language: Record<string, Record<string, unknown>>;
}

/** Must equal "version" in provider/package.json; a unit test enforces it. */
export const PACKAGE_VERSION = "0.1.0";

export const CONTAINER_TOKEN = "cellfleet:index:Container";
export const BASTION_TOKEN = "cellfleet:index:Bastion";
export const CONTAINER_STATUS_TOKEN = "cellfleet:index:ContainerStatus";
export const SECURITY_GROUP_TOKEN = "cellfleet:index:SecurityGroup";
export const SECURITY_GROUP_RULE_TOKEN = "cellfleet:index:SecurityGroupRule";
export const NETWORK_POLICY_TOKEN = "cellfleet:index:NetworkPolicy";
export const PORT_MAPPING_TOKEN = "cellfleet:index:PortMapping";
export const BANDWIDTH_TOKEN = "cellfleet:index:Bandwidth";

const PIN_NOTE = "Set hostKey or knownHostsFile: cellfleet never trusts a host key it cannot check.";

/** Connection settings shared by the cell itself and the bastion in front of it. */
function hopProperties(role: "cell" | "bastion"): Record<string, PropertySpec> {
  const target = role === "cell" ? "the cell" : "the bastion";
  return {
    host: { type: "string", description: `Address or DNS name of ${target}.` },
    port: { type: "integer", default: 22, description: `SSH port of ${target}, from 1 to 65535.` },
    user: { type: "string", default: "root", description: `User to log in as on ${target}.` },
    privateKey: {
      type: "string",
      secret: true,
      description: `Private key for ${target}, as PEM or OpenSSH text (not a file path).`,
    },
    passphrase: { type: "string", secret: true, description: "Passphrase that decrypts privateKey, if it is encrypted." },
    hostKey: {
      type: "string",
      description:
        `Pinned host key of ${target}: a public key line such as "ssh-ed25519 AAAA..." or a fingerprint such as "SHA256:...". ` +
        PIN_NOTE,
    },
    knownHostsFile: {
      type: "string",
      description: `Path of an OpenSSH known_hosts file that lists ${target}. ${PIN_NOTE}`,
    },
  };
}

const CONFIG_PROPERTIES: Record<string, PropertySpec> = {
  ...hopProperties("cell"),
  bastion: {
    $ref: `#/types/${BASTION_TOKEN}`,
    description: "A jump host to reach the cell through, as with ssh -J. Leave it unset to dial the cell directly.",
  },
  sudo: {
    type: "boolean",
    description: "Run the cell agent through `sudo -n`. Defaults to true when user is not root.",
  },
  dialTimeout: {
    type: "number",
    default: 15,
    description: "Seconds to wait for one TCP connection and SSH handshake, greater than 0 and at most 600.",
  },
  dialRetries: {
    type: "integer",
    default: 5,
    description: "Further attempts after a refused or timed-out dial, with exponential backoff, from 0 to 100.",
  },
  containerSubnet: {
    type: "string",
    default: "10.254.0.0/22",
    description:
      "IPv4 subnet for container addresses on the cell's bridge, with a prefix from 8 to 29. It must not overlap the cell's own routes, " +
      "and cannot change while containers exist on the cell.",
  },
  defaultSecurityGroups: {
    type: "array",
    items: { type: "string" },
    description: "Names of security groups bound to every container of the cell, on top of each container's own securityGroups.",
  },
};

const CONTAINER_INPUTS: Record<string, PropertySpec> = {
  image: {
    type: "string",
    description: "Path of a rootfs tarball or an OCI image archive on the machine that runs Pulumi. It is uploaded to the cell.",
  },
  command: {
    type: "array",
    items: { type: "string" },
    description: 'Program and arguments of the workload, such as ["/bin/sh", "-c", "sleep 1000"]. Must not be empty.',
  },
  env: {
    type: "object",
    additionalProperties: { type: "string" },
    description:
      "Environment variables of the workload. Names use letters, digits and underscores and do not start with a digit. " +
      "A value passed as a secret stays secret in the state and in the outputs.",
  },
  workingDir: {
    type: "string",
    default: "/",
    description: 'Absolute working directory inside the container, without "..". Defaults to "/".',
  },
  user: {
    type: "string",
    default: "0",
    description: 'User to run the workload as: "UID", "UID:GID" or a user name from the image\'s /etc/passwd. Defaults to "0".',
  },
  hostname: {
    type: "string",
    description: "Hostname inside the container: 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen.",
  },
  memory: {
    type: "string",
    default: "256MiB",
    description:
      'Memory limit, such as "512MiB", "2G" or "1.5GiB". Single-letter and "Xi"/"XiB" suffixes are binary, "KB", "MB", "GB" and "TB" decimal. ' +
      "At least 4MiB; defaults to 256MiB. CPU shares are derived from it.",
  },
  diskQuota: {
    type: "string",
    description: 'Limit on the disk space the container can write, such as "1GiB", at least 16MiB. Unset means no limit.',
  },
  privileged: {
    type: "boolean",
    default: false,
    description:
      "Run without a user namespace, so container root is root on the cell, keep CAP_SYS_ADMIN, and allow the system calls denied only to " +
      "unprivileged containers, such as mount and creating user namespaces. Every other measure still applies. Defaults to false.",
  },
  seccompDeny: {
    type: "array",
    items: { type: "string" },
    description: 'Further system calls to deny, by x86_64 name, on top of the built-in seccomp deny list, such as ["ptrace"].',
  },
  ports: {
    type: "array",
    items: { $ref: `#/types/${PORT_MAPPING_TOKEN}` },
    description: "Container ports published on the cell's addresses. A cell port already in use is rejected.",
  },
  bandwidth: {
    $ref: `#/types/${BANDWIDTH_TOKEN}`,
    description: "Rate limit of the container's network interface, in both directions.",
  },
  securityGroups: {
    type: "array",
    items: { type: "string" },
    description: "Names of SecurityGroup resources whose rules allow this container's egress, on top of the cell's default groups.",
  },
  labels: {
    type: "object",
    additionalProperties: { type: "string" },
    description: 'Labels that NetworkPolicy resources select containers by, such as { app: "web" }.',
  },
};

const CONTAINER_OUTPUTS: Record<string, PropertySpec> = {
  ...CONTAINER_INPUTS,
  hostname: { ...CONTAINER_INPUTS.hostname, description: `${CONTAINER_INPUTS.hostname.description} Defaults to the container id.` },
  containerId: { type: "string", description: "Id of the container on the cell; the same value as the resource id." },
  status: { $ref: `#/types/${CONTAINER_STATUS_TOKEN}`, description: "Whether the workload is running, as last observed." },
  reason: {
    type: "string",
    description: 'Cause of the stop, such as "exited with code 0" or "killed by the memory limit". Unset while the container runs.',
  },
  pid: {
    type: "integer",
    description: "Process id of the workload on the cell, outside the container's PID namespace; 0 when the container is stopped.",
  },
  cpuShares: {
    type: "integer",
    description: "cpu.shares of the container: proportional to memory, 1024 at 8 GiB and above, at least 10.",
  },
  startedAt: { type: "string", description: "When the container was started, as an ISO 8601 timestamp in UTC." },
  imageDigest: { type: "string", description: "Content digest of the image on the cell, which names the imported image there." },
  memoryBytes: { type: "integer", description: "Memory limit in bytes, as written to the container's cgroup." },
  address: {
    type: "string",
    description: "IPv4 address of the container on the cell's bridge. Unset when the cell has no container network, or when refresh found it broken.",
  },
  networkAttached: { type: "boolean", description: "True once the container was given a network interface at creation." },
  publishedPorts: {
    type: "array",
    items: { $ref: `#/types/${PORT_MAPPING_TOKEN}` },
    description: "Published ports, each with the cell port in use, including ports the cell chose.",
  },
};

const SECURITY_GROUP_RULE_PROPERTIES: Record<string, PropertySpec> = {
  protocol: { type: "string", description: '"tcp", "udp", "icmp" or "all".' },
  destination: {
    type: "string",
    description: 'One IPv4 address, a CIDR, a range "A-B", or a comma list of those, such as "10.0.0.0/8, 192.0.2.10-192.0.2.20".',
  },
  ports: { type: "string", description: 'tcp and udp only: a port, a range or a comma list, such as "80, 443" or "8000-8080".' },
  type: { type: "integer", description: "icmp only: the ICMP type, from -1 (any) to 255." },
  code: { type: "integer", description: "icmp only: the ICMP code, from -1 (any) to 255." },
  log: { type: "boolean", description: "tcp only: log the first packet of each new connection." },
  description: { type: "string", description: "Free text for people." },
};

const SECURITY_GROUP_INPUTS: Record<string, PropertySpec> = {
  name: {
    type: "string",
    description: "Name of the group on the cell, which containers list in securityGroups. Defaults to the resource name.",
  },
  rules: {
    type: "array",
    items: { $ref: `#/types/${SECURITY_GROUP_RULE_TOKEN}` },
    description: "Egress allow rules in the Cloud Foundry application security group format. Give rules or rulesFile.",
  },
  rulesFile: {
    type: "string",
    description: "Path of a Cloud Foundry security group rules file (a JSON list of rules) on the machine that runs Pulumi.",
  },
};

const NETWORK_POLICY_INPUTS: Record<string, PropertySpec> = {
  source: { type: "string", description: "Id of the container that opens connections. Give source or sourceLabels." },
  sourceLabels: {
    type: "object",
    additionalProperties: { type: "string" },
    description: 'One label that selects the source containers, such as { app: "web" }.',
  },
  destination: { type: "string", description: "Id of the container that accepts connections. Give destination or destinationLabels." },
  destinationLabels: {
    type: "object",
    additionalProperties: { type: "string" },
    description: "One label that selects the destination containers.",
  },
  protocol: { type: "string", default: "tcp", description: '"tcp" or "udp". Defaults to "tcp".' },
  ports: { type: "string", description: 'Destination port or range, such as "8080" or "8080-8090".' },
};

export const PACKAGE_SCHEMA: PackageSchema = {
  name: "cellfleet",
  displayName: "cellfleet",
  version: PACKAGE_VERSION,
  description: "Hardened containers on plain Linux hosts (cells) reached over SSH.",
  license: "Apache-2.0",
  keywords: ["pulumi", "cellfleet", "containers", "ssh", "category/infrastructure", "kind/native"],
  config: {
    variables: CONFIG_PROPERTIES,
    defaults: ["host", "privateKey"],
  },
  provider: {
    description: "How to reach one cell over SSH. Each provider instance manages the containers of one cell.",
    inputProperties: CONFIG_PROPERTIES,
    requiredInputs: ["host", "privateKey"],
  },
  types: {
    [BASTION_TOKEN]: {
      type: "object",
      description: "A jump host between Pulumi and the cell. Its host key must be pinned like the cell's.",
      properties: hopProperties("bastion"),
      required: ["host", "privateKey"],
    },
    [SECURITY_GROUP_RULE_TOKEN]: {
      type: "object",
      description: "One egress allow rule in the Cloud Foundry application security group format.",
      properties: SECURITY_GROUP_RULE_PROPERTIES,
      required: ["protocol", "destination"],
    },
    [PORT_MAPPING_TOKEN]: {
      type: "object",
      description: "A container port published on the cell: traffic to the cell port on any of the cell's addresses reaches the container port.",
      properties: {
        containerPort: { type: "integer", description: "Port inside the container, from 1 to 65535." },
        cellPort: { type: "integer", description: "Port on the cell, from 1 to 65535. The cell chooses a free one when it is left out." },
        protocol: { type: "string", default: "tcp", description: '"tcp" or "udp". Defaults to "tcp".' },
      },
      required: ["containerPort"],
    },
    [BANDWIDTH_TOKEN]: {
      type: "object",
      description: "A token bucket limit on the container's interface, applied to traffic in both directions.",
      properties: {
        rate: { type: "string", description: 'Rate in bits per second with a decimal unit, such as "10Mbit" (1 kbit = 1000 bit).' },
        burst: {
          type: "string",
          description: 'Bytes that may pass at once after an idle period, such as "64KiB": at least one timer tick of traffic at the rate and one frame.',
        },
      },
      required: ["rate", "burst"],
    },
    [CONTAINER_STATUS_TOKEN]: {
      type: "string",
      description: "Observed state of a container's workload.",
      enum: [
        { value: "running", description: "The workload process is alive." },
        { value: "stopped", description: "The workload has exited or was killed; reason gives the cause." },
      ],
    },
  },
  resources: {
    [CONTAINER_TOKEN]: {
      description:
        "A container on a cell: an unprivileged workload with its own root filesystem, user namespace and cgroup limits.",
      properties: CONTAINER_OUTPUTS,
      required: [
        "image",
        "command",
        "env",
        "hostname",
        "containerId",
        "status",
        "pid",
        "cpuShares",
        "startedAt",
        "imageDigest",
        "memoryBytes",
      ],
      inputProperties: CONTAINER_INPUTS,
      requiredInputs: ["image", "command"],
    },
    [SECURITY_GROUP_TOKEN]: {
      description:
        "Egress allow rules for the containers bound to it, in the Cloud Foundry security group format. Everything else is rejected; replies pass.",
      properties: {
        ...SECURITY_GROUP_INPUTS,
        name: { ...SECURITY_GROUP_INPUTS.name, description: "Name of the group on the cell." },
        enforcedRules: {
          type: "array",
          items: { $ref: `#/types/${SECURITY_GROUP_RULE_TOKEN}` },
          description: "The validated rules the cell enforces.",
        },
        enforced: { type: "boolean", description: "False when the cell's live ruleset lacks part of these rules, as found by refresh." },
        drift: { type: "string", description: "The part of the rules missing from the live ruleset, when enforced is false." },
      },
      required: ["name", "enforcedRules", "enforced"],
      inputProperties: SECURITY_GROUP_INPUTS,
      requiredInputs: [],
    },
    [NETWORK_POLICY_TOKEN]: {
      description:
        "Allows connections from one container (or label) to another on a protocol and port range. Without a policy, containers cannot reach each other.",
      properties: {
        ...NETWORK_POLICY_INPUTS,
        enforced: { type: "boolean", description: "False when the cell's live ruleset lacks this policy, as found by refresh." },
        drift: { type: "string", description: "The part of the rules missing from the live ruleset, when enforced is false." },
      },
      required: ["protocol", "ports", "enforced"],
      inputProperties: NETWORK_POLICY_INPUTS,
      requiredInputs: ["ports"],
    },
  },
  language: {
    nodejs: { packageName: "@cellfleet/sdk" },
  },
};

/** Returns the schema as the JSON text that GetSchema sends. */
export function schemaJson(): string {
  return JSON.stringify(PACKAGE_SCHEMA);
}
