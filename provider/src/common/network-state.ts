/**
 * The network state of a cell as the agent keeps it under
 * /var/lib/cellfleet/network/, and from which it renders cellfleet's whole
 * nftables table on every change. Two engines share these types. The
 * plumbing (bridge, veth pairs, addresses, bandwidth) writes container
 * attachments, and the rules engine renders security groups, policies, port
 * mappings and masquerade from all of it in one transaction.
 */

/** One rule in the Cloud Foundry application security group format, after validation. */
export interface SecurityGroupRule {
  protocol: "tcp" | "udp" | "icmp" | "icmpv6" | "all";
  /** As written: one IP, a CIDR, a range "a-b", or a comma list of those. */
  destination: string;
  /** tcp and udp only: "80", "8000-8080", "80,443". */
  ports?: string;
  type?: number;
  code?: number;
  log?: boolean;
  description?: string;
}

export type PortProtocol = "tcp" | "udp";

export interface PortMapping {
  protocol: PortProtocol;
  containerPort: number;
  /** Chosen by the cell when the request leaves it out. */
  cellPort: number;
}

/** The network view of a container, written when its veth pair is attached. */
export interface ContainerAttachment {
  id: string;
  /** The container's IPv4 address on the cell bridge. */
  address: string;
  /** The cell end of the container's veth pair, attached to the bridge. */
  hostInterface: string;
  securityGroups: string[];
  ports: PortMapping[];
  labels: Record<string, string>;
}

/** Selects policy endpoints: one container by id, or every container with a label. */
export type EndpointSelector = { container: string } | { label: { key: string; value: string } };

export interface NetworkPolicyState {
  id: string;
  source: EndpointSelector;
  destination: EndpointSelector;
  protocol: PortProtocol;
  /** Inclusive port range; a single port has from === to. */
  ports: { from: number; to: number };
}

/** Cell-wide settings, from the provider configuration, fixed while containers exist. */
export interface CellNetworkSettings {
  bridge: string;
  /** IPv4 CIDR of the container subnet, such as "10.254.0.0/22". */
  subnet: string;
  /** The bridge's own address, the containers' default gateway. */
  gateway: string;
  /** Security groups bound to every container of the cell. */
  defaultSecurityGroups: string[];
}

export interface NetworkState {
  settings: CellNetworkSettings;
  containers: ContainerAttachment[];
  securityGroups: Record<string, SecurityGroupRule[]>;
  policies: NetworkPolicyState[];
}
