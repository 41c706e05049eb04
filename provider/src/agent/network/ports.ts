/**
 * Cell ports for published container ports. A cell port reaches a container
 * through DNAT, which the rules engine renders from the attachments. A port
 * is free only when no other container publishes it and no process on the
 * cell listens on it, because the DNAT rule would take that process's new
 * connections.
 */
import type { ContainerAttachment, PortMapping, PortProtocol } from "../../common/network-state";
import type { PortRequest } from "../../common/network-spec";
import { type Runner, runChecked } from "./tools";

/**
 * Cell ports chosen when a request leaves cellPort out. The range lies above
 * Linux's default ephemeral range (32768-60999, net.ipv4.ip_local_port_range),
 * so the cell's own outgoing connections do not use these ports.
 */
export const AUTOMATIC_PORT_RANGE = { first: 61000, last: 61999 } as const;

export interface ListeningSocket {
  protocol: PortProtocol;
  port: number;
  /** The owning processes as ss prints them, such as `"sshd",pid=812`; empty when ss cannot tell. */
  users: string;
}

/**
 * Parses `ss -Hltnup` output: one line per listening tcp socket or bound udp
 * socket, such as
 * `tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=812,fd=3))`.
 */
export function parseListeningSockets(output: string): ListeningSocket[] {
  const sockets: ListeningSocket[] = [];
  for (const line of output.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 5 || (fields[0] !== "tcp" && fields[0] !== "udp")) continue;
    const local = fields[4];
    const port = Number(local.slice(local.lastIndexOf(":") + 1));
    if (!Number.isInteger(port) || port <= 0) continue;
    const users = /users:\(\((.*)\)\)/.exec(line)?.[1].replace(/,fd=\d+/g, "") ?? "";
    sockets.push({ protocol: fields[0], port, users });
  }
  return sockets;
}

export async function listListeningSockets(runner: Runner): Promise<ListeningSocket[]> {
  return parseListeningSockets(await runChecked(runner, ["ss", "-Hltnup"]));
}

/** A cell port that cannot be used, with a message that names the port and its user. */
export class PortConflict extends Error {}

/**
 * Returns the port mappings for one container: requested cell ports after
 * checking that they are free, and free ports of AUTOMATIC_PORT_RANGE for the
 * rest. Throws PortConflict when a requested port is taken or the range is
 * exhausted.
 */
export function assignCellPorts(
  containerId: string,
  requests: PortRequest[],
  others: Pick<ContainerAttachment, "id" | "ports">[],
  listening: ListeningSocket[],
): PortMapping[] {
  const owners = new Map<string, string>();
  for (const other of others) {
    if (other.id === containerId) continue;
    for (const port of other.ports) owners.set(`${port.protocol}/${port.cellPort}`, `container ${other.id}`);
  }
  for (const socket of listening) {
    const key = `${socket.protocol}/${socket.port}`;
    if (!owners.has(key)) owners.set(key, socket.users ? `a listening socket of ${socket.users}` : "a listening socket on the cell");
  }

  const mappings: PortMapping[] = [];
  for (const request of requests) {
    if (request.cellPort === undefined) continue;
    const key = `${request.protocol}/${request.cellPort}`;
    const owner = owners.get(key);
    if (owner !== undefined) {
      throw new PortConflict(`cell port ${key} for container ${containerId} is already used by ${owner}: choose another cellPort or leave it out to get a free one`);
    }
    owners.set(key, `container ${containerId}`);
    mappings.push({ protocol: request.protocol, containerPort: request.containerPort, cellPort: request.cellPort });
  }
  for (const request of requests) {
    if (request.cellPort !== undefined) continue;
    let chosen: number | undefined;
    for (let port = AUTOMATIC_PORT_RANGE.first; port <= AUTOMATIC_PORT_RANGE.last; port++) {
      if (!owners.has(`${request.protocol}/${port}`)) {
        chosen = port;
        break;
      }
    }
    if (chosen === undefined) {
      throw new PortConflict(
        `no free ${request.protocol} cell port for container ${containerId} port ${request.containerPort}: all of ${AUTOMATIC_PORT_RANGE.first}-${AUTOMATIC_PORT_RANGE.last} are in use; give a cellPort`,
      );
    }
    owners.set(`${request.protocol}/${chosen}`, `container ${containerId}`);
    mappings.push({ protocol: request.protocol, containerPort: request.containerPort, cellPort: chosen });
  }
  // Keep the order of the request, so observations list ports as the user wrote them.
  return requests.map((request) => mappings.find((mapping) => mapping.protocol === request.protocol && mapping.containerPort === request.containerPort) as PortMapping);
}
