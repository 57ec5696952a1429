// medid console: verifies an audit event's inclusion in the signed log, in the browser, with
// the page's own code. Nothing here takes the server's word: the leaf hash is recomputed from
// the event shown (RFC 8785 canonical JSON), the root from the inclusion proof (RFC 9162
// section 2.1.3.2), and the checkpoint's Ed25519 signature with WebCrypto (C2SP signed note).
"use strict";

const enc = new TextEncoder();

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function unbase64(s) {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

// RFC 8785: keys sorted by UTF-16 code units (JavaScript's default order), no whitespace,
// strings and numbers as ECMAScript serialises them.
function canonical(v) {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  const keys = Object.keys(v).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
}

async function sha256(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}

// RFC 9162 2.1.3.2: the root that `proof` gives for leaf `index` of a tree of `size` leaves.
async function rootFromProof(index, size, leaf, proof) {
  if (index >= size) return null;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// A C2SP signed note: the body (lines up to the blank line) and signature lines
// "— <name> <base64(key id ‖ signature)>".
async function verifyNote(note, name, publicKey) {
  const split = note.indexOf("\n\n");
  if (split < 0) return { ok: false, why: "the checkpoint is not a signed note" };
  const body = note.slice(0, split + 1);
  const keyId = (await sha256(enc.encode(name), Uint8Array.of(0x0a, 0x01), publicKey)).slice(0, 4);
  for (const line of note.slice(split + 2).split("\n")) {
    const m = line.match(/^\u2014 (\S+) (\S+)$/);
    if (!m || m[1] !== name) continue;
    const blob = unbase64(m[2]);
    if (!equal(blob.slice(0, 4), keyId)) continue;
    if (!crypto.subtle || !crypto.subtle.importKey) {
      return { ok: null, why: "this browser has no WebCrypto" };
    }
    try {
      const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
      const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, blob.slice(4), enc.encode(body));
      return { ok, why: ok ? "valid Ed25519 signature by key " + hex(keyId) : "the signature does not verify" };
    } catch (e) {
      return { ok: null, why: "this browser cannot verify Ed25519 (" + e.name + ")" };
    }
  }
  return { ok: false, why: "no signature by " + name + " with the audit key" };
}

function show(id, state, text) {
  const el = document.getElementById(id);
  el.textContent = text;
  el.className = state === true ? "pass" : state === false ? "fail" : "unknown";
  el.dataset.result = state === true ? "pass" : state === false ? "fail" : "unknown";
}

async function run() {
  const data = JSON.parse(document.getElementById("proof-data").textContent);
  const event = JSON.parse(document.getElementById("event-json").textContent);
  const leaf = await sha256(Uint8Array.of(0), enc.encode(canonical(event)));
  const stored = data.leaf_hash;
  show("leaf", hex(leaf) === stored,
    hex(leaf) === stored
      ? "recomputed from the event shown: " + hex(leaf)
      : "recomputed " + hex(leaf) + ", but the log holds " + stored + ": the event was changed after it was logged");
  const lines = data.checkpoint.split("\n");
  const signedRoot = unbase64(lines[2] || "");
  const size = Number(lines[1]);
  const root = await rootFromProof(event.seq - 1, size, leaf, data.proof.map(unhex));
  const rootOk = root !== null && equal(root, signedRoot);
  show("root", rootOk,
    rootOk
      ? "the inclusion proof leads from this event to the checkpoint's root (" + size + " events)"
      : "the inclusion proof does not lead from this event to the checkpoint's root");
  const note = await verifyNote(data.checkpoint, data.key_name, unbase64(data.public_key));
  show("signature", note.ok, note.why);
  const all = rootOk && note.ok === true;
  show("verdict", rootOk && note.ok !== false ? (note.ok === true ? true : null) : false,
    all ? "Verified in this browser" : rootOk && note.ok === null ? "Included; signature not checked here" : "Verification FAILED");
  document.body.dataset.verified = all ? "yes" : "no";
}

run().catch((e) => show("verdict", false, "Verification FAILED: " + e));
