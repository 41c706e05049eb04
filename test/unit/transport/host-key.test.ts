import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { CellDialError, HostKeyMismatchError } from "../../../provider/src/transport/errors";
import {
  checkKnownHosts,
  createHostKeyCheck,
  describePresentedKey,
  fingerprintOfBlob,
  hostFieldMatches,
  keyTypeOfBlob,
  knownHostsName,
  parseHostKeyPin,
  parseKnownHosts,
  pinMatches,
  preferredHostKeyAlgorithms,
} from "../../../provider/src/transport/host-key";

// Keys and fingerprints made with OpenSSH 9.2: `ssh-keygen -t ed25519` and
// `-t ecdsa`, then `ssh-keygen -lf`. The hashed lines come from
// `ssh-keygen -H` over entries for "[127.0.0.1]:2222" and "cell-7.internal".
const KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDJ72jNFk3lUKRT3oEGArKff230MJiGrW3WPeDuY/d5o";
const KEY_A_FINGERPRINT = "SHA256:1/zSJC4zpyN8yveQopJYtWiG9iNNwAopCGe3yxwlg8s";
const KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJVVhqkDk2pIFg7aN14ZW0feR6LCUMUhSenH2fjjfW75";
const KEY_B_FINGERPRINT = "SHA256:8o/OFvbouHVWq2kOdHvWTFIvvn4hIvF1SJLuuGpUQ1o";
const KEY_C =
  "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJVeWn31cszo3weI2AuJmVKYuoDAVpX/177U+zOkyWaLEZf2V/HWjrifUH9r1TIkBQ1xiq5qGrqi/wJh4svaENM=";
const KEY_C_FINGERPRINT = "SHA256:hEwmeA+qUD4yJnrIHN2edRrVoGngD/Bm4uG+5kF8KYI";
const HASHED_PORT_2222 = "|1|0y7b7ZSt/Z3Tf0D6uIJEER8q1FU=|ABSZYy74hH9XBRkn1JMQwJMyBoc=";
const HASHED_CELL_7 = "|1|7Xx1rDuZNBSW9hD7WcELih4kjaY=|mEodZ3IOCAAWcRgOfVF/3RU2J+g=";

function blobOf(line: string): Buffer {
  return Buffer.from(line.split(" ")[1], "base64");
}

describe("host key fingerprints", () => {
  it("match ssh-keygen -lf output", () => {
    assert.equal(fingerprintOfBlob(blobOf(KEY_A)), KEY_A_FINGERPRINT);
    assert.equal(fingerprintOfBlob(blobOf(KEY_B)), KEY_B_FINGERPRINT);
    assert.equal(fingerprintOfBlob(blobOf(KEY_C)), KEY_C_FINGERPRINT);
  });

  it("read the key type from the blob", () => {
    assert.equal(keyTypeOfBlob(blobOf(KEY_A)), "ssh-ed25519");
    assert.equal(keyTypeOfBlob(blobOf(KEY_C)), "ecdsa-sha2-nistp256");
    assert.equal(keyTypeOfBlob(Buffer.from([0, 0, 0, 200, 1])), undefined);
    assert.equal(keyTypeOfBlob(Buffer.alloc(2)), undefined);
  });
});

describe("host key pins", () => {
  it("fingerprint pin matches its key only", () => {
    const pin = parseHostKeyPin(KEY_A_FINGERPRINT);
    assert.equal(pinMatches(pin, describePresentedKey(blobOf(KEY_A))), true);
    assert.equal(pinMatches(pin, describePresentedKey(blobOf(KEY_B))), false);
  });

  it("fingerprint pin accepts base64 padding", () => {
    const pin = parseHostKeyPin(`${KEY_A_FINGERPRINT}=`);
    assert.equal(pinMatches(pin, describePresentedKey(blobOf(KEY_A))), true);
  });

  it("public key pin matches its key only", () => {
    const pin = parseHostKeyPin(`${KEY_A} root@cell`);
    assert.deepEqual(pin.kind, "public-key");
    assert.equal(pinMatches(pin, describePresentedKey(blobOf(KEY_A))), true);
    assert.equal(pinMatches(pin, describePresentedKey(blobOf(KEY_B))), false);
  });

  it("public key pin with wrong type is rejected", () => {
    const base64 = KEY_A.split(" ")[1];
    assert.throws(() => parseHostKeyPin(`ssh-rsa ${base64}`), /contains type ssh-ed25519, not ssh-rsa/);
  });
});

describe("known_hosts host matching", () => {
  const cases: { field: string; name: string; expected: boolean }[] = [
    { field: "cell-7.internal", name: "cell-7.internal", expected: true },
    { field: "CELL-7.internal", name: "cell-7.internal", expected: true },
    { field: "cell-8.internal", name: "cell-7.internal", expected: false },
    { field: "cell-8,cell-7.internal,10.0.0.7", name: "cell-7.internal", expected: true },
    { field: "[127.0.0.1]:2222", name: "[127.0.0.1]:2222", expected: true },
    { field: "127.0.0.1", name: "[127.0.0.1]:2222", expected: false },
    { field: "[127.0.0.1]:2223", name: "[127.0.0.1]:2222", expected: false },
    { field: "*.internal", name: "cell-7.internal", expected: true },
    { field: "cell-?.internal", name: "cell-7.internal", expected: true },
    { field: "*.internal,!cell-7.internal", name: "cell-7.internal", expected: false },
    { field: "*.internal,!cell-7.internal", name: "cell-6.internal", expected: true },
    { field: HASHED_PORT_2222, name: "[127.0.0.1]:2222", expected: true },
    { field: HASHED_PORT_2222, name: "[127.0.0.1]:2223", expected: false },
    { field: HASHED_CELL_7, name: "cell-7.internal", expected: true },
    { field: HASHED_CELL_7, name: "cell-6.internal", expected: false },
    { field: "|2|abc|def", name: "cell-7.internal", expected: false },
  ];
  for (const { field, name, expected } of cases) {
    it(`${field} ${expected ? "matches" : "does not match"} ${name}`, () => {
      assert.equal(hostFieldMatches(field, name), expected);
    });
  }

  it("lookup name brackets non-22 ports", () => {
    assert.equal(knownHostsName("Cell-7.Internal", 22), "cell-7.internal");
    assert.equal(knownHostsName("127.0.0.1", 2222), "[127.0.0.1]:2222");
  });
});

describe("known_hosts parsing and checks", () => {
  const text = [
    "# a comment",
    "",
    `cell-7.internal,10.0.0.7 ${KEY_A} root@cell-7`,
    `${HASHED_PORT_2222} ${KEY_B}`,
    `@cert-authority *.internal ${KEY_C}`,
    `@revoked * ${KEY_C}`,
    "broken-line-without-key",
    `cell-9.internal ssh-ed25519 AAAA`,
    `@unknown-marker cell-7.internal ${KEY_B}`,
  ].join("\n");
  const known = parseKnownHosts(text, "/etc/cellfleet/known_hosts");

  it("keeps valid entries with line numbers", () => {
    assert.deepEqual(
      known.entries.map((entry) => [entry.line, entry.marker ?? "", entry.keyType]),
      [
        [3, "", "ssh-ed25519"],
        [4, "", "ssh-ed25519"],
        [5, "cert-authority", "ecdsa-sha2-nistp256"],
        [6, "revoked", "ecdsa-sha2-nistp256"],
      ],
    );
  });

  it("notes skipped and unsupported lines", () => {
    assert.equal(known.notes.length, 4);
    assert.match(known.notes[0], /line 5: @cert-authority entries are not supported/);
    assert.match(known.notes[1], /line 7: skipped/);
    assert.match(known.notes[2], /line 8: skipped, because its key data is not a valid ssh-ed25519 key/);
    assert.match(known.notes[3], /line 9: skipped, because the marker @unknown-marker is unknown/);
  });

  it("accepts the listed key for a plain entry", () => {
    const verdict = checkKnownHosts(known, "cell-7.internal", 22, describePresentedKey(blobOf(KEY_A)));
    assert.equal(verdict.status, "match");
  });

  it("accepts the listed key for a hashed port entry", () => {
    const verdict = checkKnownHosts(known, "127.0.0.1", 2222, describePresentedKey(blobOf(KEY_B)));
    assert.equal(verdict.status, "match");
  });

  it("reports a changed key", () => {
    const verdict = checkKnownHosts(known, "cell-7.internal", 22, describePresentedKey(blobOf(KEY_B)));
    assert.equal(verdict.status, "changed");
    assert.deepEqual(verdict.status === "changed" && verdict.entries.map((entry) => entry.line), [3]);
  });

  it("reports an unknown host", () => {
    const verdict = checkKnownHosts(known, "cell-8.other", 22, describePresentedKey(blobOf(KEY_A)));
    assert.equal(verdict.status, "unknown");
  });

  it("rejects a revoked key for any host", () => {
    const verdict = checkKnownHosts(known, "cell-7.internal", 22, describePresentedKey(blobOf(KEY_C)));
    assert.equal(verdict.status, "revoked");
  });

  it("ignores cert-authority lines for matching", () => {
    const withoutRevoked = parseKnownHosts(`@cert-authority *.internal ${KEY_C}\n`, "file");
    const verdict = checkKnownHosts(withoutRevoked, "cell-7.internal", 22, describePresentedKey(blobOf(KEY_C)));
    assert.equal(verdict.status, "unknown");
    assert.deepEqual(verdict.status === "unknown" && verdict.certAuthorities.map((entry) => entry.line), [1]);
  });
});

describe("preferred host key algorithms", () => {
  it("keeps the default order without trusted types", () => {
    assert.equal(preferredHostKeyAlgorithms([]), undefined);
  });

  it("puts RSA signature algorithms first for an RSA key", () => {
    const list = preferredHostKeyAlgorithms(["ssh-rsa"]) as string[];
    assert.deepEqual(list.slice(0, 3), ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]);
    assert.equal(list.includes("ssh-ed25519"), true);
    assert.equal(new Set(list).size, list.length);
  });

  it("puts ecdsa first for an ecdsa key", () => {
    const list = preferredHostKeyAlgorithms(["ecdsa-sha2-nistp256", "ssh-ed25519"]) as string[];
    assert.deepEqual(list.slice(0, 2), ["ecdsa-sha2-nistp256", "ssh-ed25519"]);
  });
});

describe("createHostKeyCheck", () => {
  const log = (): void => {};
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "cellfleet-host-key-"));
  });

  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("pin mismatch names the seen fingerprint", () => {
    const check = createHostKeyCheck(
      { host: "198.18.0.2", port: 22, hostKey: KEY_A_FINGERPRINT },
      "root@198.18.0.2:22",
      "cell",
      log,
    );
    assert.equal(check.verify(blobOf(KEY_A)), undefined);
    const error = check.verify(blobOf(KEY_B));
    assert.ok(error instanceof HostKeyMismatchError);
    assert.equal(error.cell, "root@198.18.0.2:22");
    assert.equal(error.presentedFingerprint, KEY_B_FINGERPRINT);
    assert.equal(
      error.message,
      `host key of root@198.18.0.2:22 does not match the pin: the cell presented ssh-ed25519 ${KEY_B_FINGERPRINT}; if the cell was rebuilt, verify that fingerprint out of band and set hostKey to it`,
    );
  });

  it("bastion mismatch names bastion.hostKey", () => {
    const check = createHostKeyCheck({ host: "jump", port: 22, hostKey: KEY_A }, "ops@jump:22", "bastion", log);
    const error = check.verify(blobOf(KEY_B));
    assert.match(error?.message ?? "", /the bastion presented ssh-ed25519 .* set bastion\.hostKey to it/);
  });

  it("public key pin prefers its algorithm", () => {
    const check = createHostKeyCheck({ host: "h", port: 22, hostKey: KEY_C }, "root@h:22", "cell", log);
    assert.equal(check.serverHostKeyAlgorithms?.[0], "ecdsa-sha2-nistp256");
  });

  it("hostKey takes precedence over knownHostsFile", () => {
    const file = join(dir, "precedence");
    writeFileSync(file, `h ${KEY_B}\n`);
    const check = createHostKeyCheck({ host: "h", port: 22, hostKey: KEY_A, knownHostsFile: file }, "root@h:22", "cell", log);
    assert.equal(check.verify(blobOf(KEY_A)), undefined);
  });

  it("known_hosts file accepts and rejects", () => {
    const file = join(dir, "known_hosts");
    writeFileSync(file, `${HASHED_PORT_2222} ${KEY_B}\n@cert-authority * ${KEY_C}\n`);
    const notes: string[] = [];
    const check = createHostKeyCheck({ host: "127.0.0.1", port: 2222, knownHostsFile: file }, "root@127.0.0.1:2222", "cell", (note) =>
      notes.push(note),
    );
    assert.equal(check.verify(blobOf(KEY_B)), undefined);
    assert.equal(notes.length, 1);
    assert.match(notes[0], /@cert-authority entries are not supported/);

    const changed = check.verify(blobOf(KEY_A));
    assert.ok(changed instanceof HostKeyMismatchError);
    assert.match(changed.message, new RegExp(`does not match the known_hosts file ${file} \\(entries for \\[127\\.0\\.0\\.1\\]:2222 on lines 1\\)`));
    assert.match(changed.message, new RegExp(`the cell presented ssh-ed25519 ${KEY_A_FINGERPRINT.replace(/[+/]/g, "\\$&")}`));
    assert.match(changed.message, /@cert-authority entries on lines 2 were ignored/);
  });

  it("known_hosts file without the host reports unknown", () => {
    const file = join(dir, "other_hosts");
    writeFileSync(file, `cell-7.internal ${KEY_A}\n`);
    const check = createHostKeyCheck({ host: "127.0.0.1", port: 2222, knownHostsFile: file }, "root@127.0.0.1:2222", "cell", log);
    const error = check.verify(blobOf(KEY_A));
    assert.match(error?.message ?? "", /is unknown: the known_hosts file .* has no entry for \[127\.0\.0\.1\]:2222/);
    assert.equal(error?.presentedFingerprint, KEY_A_FINGERPRINT);
  });

  it("missing known_hosts file fails the dial", () => {
    const file = join(dir, "missing");
    assert.throws(
      () => createHostKeyCheck({ host: "h", port: 22, knownHostsFile: file }, "root@h:22", "cell", log),
      (error: unknown) =>
        error instanceof CellDialError && error.step === "read known_hosts file" && error.message.includes(file),
    );
  });
});
