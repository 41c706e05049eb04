// A cell reached as a non-root user who may run commands through sudo: the
// agent installs and runs as root through `sudo -n`, and images reach the
// root-only image store through the agent. The test adds a throwaway user
// and sudoers entry to this machine and removes both afterwards.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";

import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, getCellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { cellConfigFor, testImagePath } from "../helpers/session";

const run = promisify(execFile);
const USER = "cf-sudo-test";
const SUDOERS = "/etc/sudoers.d/cellfleet-sudo-test";

async function userExists(): Promise<boolean> {
  return run("id", [USER]).then(
    () => true,
    () => false,
  );
}

describe("cell reached through sudo", function () {
  this.timeout(120_000);
  let cell: Cell;
  let createdUser = false;

  before(async function () {
    assert.equal(await userExists(), false, `user ${USER} already exists on this machine; remove it first`);
    await run("useradd", ["--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", USER]);
    createdUser = true;
    // "*" instead of the locked "!": sshd without PAM refuses locked accounts even for key logins.
    await run("usermod", ["--password", "*", USER]);
    writeFileSync(SUDOERS, `${USER} ALL=(root) NOPASSWD: ALL\n`, { mode: 0o440 });
    cell = await createCell("t-sudo");
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
    rmSync(SUDOERS, { force: true });
    if (createdUser) await run("userdel", [USER]);
  });

  it("installs the agent and runs a container", async function () {
    const session = await getCellSession(cellConfigFor(cell, { user: USER }));
    assert.equal(session.connection.sudoPrefix, "sudo -n ");
    const digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    const created = await session.agent.call("container.create", { id: "sudo-1", imageDigest: digest, spec: { command: ["/bin/sleep", "600"], memory: 64 * 1024 * 1024 } });
    assert.equal(created.status, "running");
    const agentOwner = await cell.exec(["sh", "-c", "ps -o user= -C node | sort -u"]);
    assert.match(agentOwner.stdout, /root/);
    await session.agent.call("container.delete", { id: "sudo-1" });
  });

  it("leaves no upload in /tmp", async function () {
    const uploads = await cell.exec(["sh", "-c", "ls /tmp | grep -c '^cellfleet-upload-' || true"]);
    assert.equal(uploads.stdout.trim(), "0");
  });

});
