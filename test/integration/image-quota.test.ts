// Image import from both archive formats, and disk quotas that really stop
// writes, on a real local cell.
import assert from "node:assert/strict";

import { ensureImageOnCell, imageDigest } from "../../provider/src/plugin/resources/container/image";
import { closeAllCellSessions, type CellSession } from "../../provider/src/transport/pool";
import { createCell, type Cell } from "../helpers/cell";
import { sessionFor, testImagePath } from "../helpers/session";

const MIB = 1024 * 1024;

async function waitForStop(session: CellSession, id: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const observed = await session.agent.call("container.inspect", { id });
    if (observed?.status === "stopped") return observed;
    if (Date.now() > deadline) throw new Error(`container ${id} still running after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe("images and disk quotas on a local cell", function () {
  this.timeout(120_000);
  let cell: Cell;
  let session: CellSession;

  before(async function () {
    cell = await createCell("t-img");
    session = await sessionFor(cell);
  });

  after(async function () {
    await closeAllCellSessions();
    await cell?.remove();
  });

  it("imports an OCI image archive and runs it", async function () {
    const digest = await imageDigest(testImagePath("busybox-oci.tar"));
    await ensureImageOnCell(session, testImagePath("busybox-oci.tar"), digest);
    await session.agent.call("container.create", {
      id: "oci-1",
      imageDigest: digest,
      spec: { command: ["/bin/sh", "-c", "cat /etc/passwd | grep -c app; exit 3"], env: {}, workingDir: "/", user: "0", memory: 64 * MIB },
    });
    const stopped = await waitForStop(session, "oci-1");
    assert.equal(stopped.reason, "exited with code 3");
    const log = await cell.exec(["cat", "/var/lib/cellfleet/containers/oci-1/stdout.log"]);
    assert.equal(log.stdout.trim(), "1");
    await session.agent.call("container.delete", { id: "oci-1" });
  });

  it("shifts image root to the mapped root id", async function () {
    const digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    const owner = await cell.exec(["stat", "-c", "%u:%g", `/var/lib/cellfleet/images/${digest.slice(7)}/rootfs/bin/busybox`]);
    assert.equal(owner.stdout.trim(), "4294967294:4294967294");
    const app = await cell.exec(["stat", "-c", "%u:%g", `/var/lib/cellfleet/images/${digest.slice(7)}/rootfs/home/app`]);
    assert.equal(app.stdout.trim(), "1000:1000");
  });

  it("imports an image once", async function () {
    const digest = await imageDigest(testImagePath());
    await ensureImageOnCell(session, testImagePath(), digest);
    const incoming = await cell.exec(["ls", "/var/lib/cellfleet/images/incoming"]);
    assert.equal(incoming.stdout.trim(), "");
    assert.deepEqual(await session.agent.call("image.has", { digest }), { present: true });
  });

  it("stops writes past the disk quota with ENOSPC", async function () {
    const digest = await imageDigest(testImagePath());
    await session.agent.call("container.create", {
      id: "quota-1",
      imageDigest: digest,
      spec: {
        command: ["/bin/sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo exit=$?; ls -l /tmp/fill"],
        env: {},
        workingDir: "/",
        user: "0",
        memory: 64 * MIB,
        diskQuota: 32 * MIB,
      },
    });
    await waitForStop(session, "quota-1");
    const log = await cell.exec(["cat", "/var/lib/cellfleet/containers/quota-1/stdout.log"]);
    assert.match(log.stdout, /No space left on device/);
    assert.match(log.stdout, /exit=1/);
    const size = Number(/\s(\d+)\s+\w+\s+\d+\s+[\d:]+\s+\/tmp\/fill/.exec(log.stdout)?.[1] ?? "0");
    assert.ok(size > 16 * MIB, `wrote only ${size} bytes before ENOSPC`);
    assert.ok(size <= 32 * MIB, `wrote ${size} bytes, past the quota`);
  });

  it("unmounts the quota filesystem on delete", async function () {
    await session.agent.call("container.delete", { id: "quota-1" });
    const mounts = await cell.exec(["grep", "-c", "quota-1", "/proc/self/mountinfo"]);
    assert.equal(mounts.stdout.trim(), "0");
    const loops = await cell.exec(["sh", "-c", "losetup -a | grep -c quota-1 || true"]);
    assert.equal(loops.stdout.trim(), "0");
  });

  it("rejects a user missing from the image", async function () {
    const digest = await imageDigest(testImagePath());
    await assert.rejects(
      session.agent.call("container.create", {
        id: "nouser-1",
        imageDigest: digest,
        spec: { command: ["/bin/true"], env: {}, workingDir: "/", user: "nobody-here", memory: 64 * MIB },
      }),
      /user "nobody-here" is not in the image's \/etc\/passwd/,
    );
    const left = await cell.exec(["test", "-e", "/var/lib/cellfleet/containers/nouser-1"]);
    assert.notEqual(left.code, 0, "a failed create left its directory");
  });

  it("reports a missing executable with the failed step", async function () {
    const digest = await imageDigest(testImagePath());
    await assert.rejects(
      session.agent.call("container.create", {
        id: "noexec-1",
        imageDigest: digest,
        spec: { command: ["no-such-program"], env: {}, workingDir: "/", user: "0", memory: 64 * MIB },
      }),
      /container init: resolve executable.*executable "no-such-program" not found/,
    );
    const cgroup = await cell.exec(["test", "-e", `/sys/fs/cgroup/memory/${cell.cgroupParent}/noexec-1`]);
    assert.notEqual(cgroup.code, 0, "a failed create left its cgroup");
  });
});
