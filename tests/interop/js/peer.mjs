// An independent Matrix client for Ratchet's interop tests: matrix-js-sdk with its Rust crypto
// (the crypto stack Element uses), driven over JSON lines.
//
// Protocol: one request per line on stdin   {"id": n, "cmd": "...", ...args}
//           one response per line on stdout {"id": n, "ok": true, "result": ...}
//                                        or {"id": n, "ok": false, "error": "..."}
// Requests run concurrently (each response carries its id). Everything else (SDK logs, the
// peer's own trace) goes to stderr; stdout carries protocol lines only.
// Closing stdin stops the client and exits, like the `stop` command.
//
// Environment: JSPEER_DEBUG=1 also sends the SDK's info/debug logs to stderr.

import { format } from "node:util";
import { createInterface } from "node:readline";

// ------------------------------------------------------------------------------------ environment

// matrix-js-sdk 43 targets Node >= 22; Node 20 lacks Promise.withResolvers.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

// stdout is the protocol channel: route every console method to stderr (the SDK's loglevel
// logger looks console methods up at call time, so this catches all of its output).
const VERBOSE = Boolean(process.env.JSPEER_DEBUG);
const writeOut = process.stdout.write.bind(process.stdout);
const toStderr =
    (level) =>
    (...args) => {
        process.stderr.write(`[${new Date().toISOString()}] ${level} ${format(...args)}\n`);
    };
const quiet = () => {};
console.log = VERBOSE ? toStderr("LOG") : quiet;
console.info = VERBOSE ? toStderr("INFO") : quiet;
console.debug = VERBOSE ? toStderr("DEBUG") : quiet;
console.trace = VERBOSE ? toStderr("TRACE") : quiet;
console.warn = toStderr("WARN");
console.error = toStderr("ERROR");
const trace = toStderr("PEER");

// fake-indexeddb first (the SDK expects an IndexedDB global), then the SDK.
await import("fake-indexeddb/auto");
const sdk = await import("matrix-js-sdk");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { RustBackupManager } = await import("matrix-js-sdk/lib/rust-crypto/backup.js");
logger.setLevel(VERBOSE ? "debug" : "warn");
// The SDK waits a random 0-10 s before each key backup upload round; tests want it prompt.
RustBackupManager.maxBackupLoopStartDelayMillis = Number(process.env.JSPEER_BACKUP_DELAY_MS ?? 100);

const { AllDevicesIsolationMode, OnlySignedDevicesIsolationMode, decodeRecoveryKey } = cryptoApi;

// ------------------------------------------------------------------------------------ state

/** @type {import("matrix-js-sdk").MatrixClient | null} */
let client = null;
let ownUserId = null;
/** Secret storage keys this peer knows: keyId -> Uint8Array (created here, or matched from a recovery key). */
const keyCache = new Map();
/** While a command runs "with a recovery key", only that key may open secret storage. */
let activeRecoveryKey = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function need(value, name) {
    if (value === undefined || value === null || value === "") throw new Error(`missing argument: ${name}`);
    return value;
}

function requireClient() {
    if (!client) throw new Error("not logged in (send `login` first)");
    return client;
}

function requireCrypto() {
    const crypto = requireClient().getCrypto();
    if (!crypto) throw new Error("crypto is not initialised");
    return crypto;
}

/** Poll `check` (sync or async) until it returns a truthy value; throw `what` on timeout. */
async function waitFor(check, timeoutMs, what, intervalMs = 100) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(intervalMs);
    }
}

// ------------------------------------------------------------------------------------ secret storage keys

async function getSecretStorageKey({ keys }, name) {
    const entries = Object.entries(keys);
    if (activeRecoveryKey) {
        for (const [keyId, info] of entries) {
            if (await requireClient().secretStorage.checkKey(activeRecoveryKey, info)) {
                keyCache.set(keyId, activeRecoveryKey);
                return [keyId, activeRecoveryKey];
            }
        }
        throw new Error(
            `the recovery key does not match the secret storage key(s) ${entries.map(([id]) => id).join(", ")} ` +
                `protecting ${name}`,
        );
    }
    for (const [keyId] of entries) {
        if (keyCache.has(keyId)) return [keyId, keyCache.get(keyId)];
    }
    throw new Error(
        `no secret storage key known for ${name} (needs one of ${entries.map(([id]) => id).join(", ")}); ` +
            "pass a recovery_key",
    );
}

function cacheSecretStorageKey(keyId, _keyInfo, key) {
    keyCache.set(keyId, key);
}

/** Run `fn` with `recoveryKey` (encoded form) as the only key that may open secret storage. */
async function withRecoveryKey(recoveryKey, fn) {
    let decoded;
    try {
        decoded = decodeRecoveryKey(need(recoveryKey, "recovery_key"));
    } catch (e) {
        throw new Error(`invalid recovery key: ${e.message ?? e}`);
    }
    const previous = activeRecoveryKey;
    activeRecoveryKey = decoded;
    try {
        return await fn();
    } finally {
        activeRecoveryKey = previous;
    }
}

// ------------------------------------------------------------------------------------ helpers

function passwordAuth(password) {
    // UIAuthCallback: try without auth (Synapse lets a first cross-signing upload through), and answer the
    // 401 challenge with the password stage.
    return async (makeRequest) => {
        let session;
        try {
            return await makeRequest(null);
        } catch (e) {
            if (e?.httpStatus !== 401 || !e?.data?.flows) throw e;
            session = e.data.session;
        }
        return await makeRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: ownUserId },
            password,
            session,
        });
    };
}

async function crossSigningStatus() {
    const crypto = requireCrypto();
    const status = await crypto.getCrossSigningStatus();
    return {
        ...status,
        is_cross_signing_ready: await crypto.isCrossSigningReady(),
        master_key_id: await crypto.getCrossSigningKeyId(),
        secret_storage_ready: await crypto.isSecretStorageReady(),
        default_key_id: await requireClient().secretStorage.getDefaultKeyId(),
    };
}

function statusDict(status) {
    if (!status) return { known: false };
    return {
        known: true,
        signed_by_owner: status.signedByOwner,
        cross_signing_verified: status.crossSigningVerified,
        locally_verified: status.localVerified,
        is_verified: status.isVerified(),
    };
}

async function deviceStatus(userId, deviceId, { waitMs = 10000, expectSigned } = {}) {
    const crypto = requireCrypto();
    const deadline = Date.now() + waitMs;
    let last = { known: false };
    for (;;) {
        if (userId === ownUserId) {
            await crypto.userHasCrossSigningKeys(userId, true); // forces a fresh /keys/query of our own user
        }
        await crypto.getUserDeviceInfo([userId], true);
        last = statusDict(await crypto.getDeviceVerificationStatus(userId, deviceId));
        const done = last.known && (expectSigned === undefined || last.signed_by_owner === expectSigned);
        if (done || Date.now() >= deadline) return last;
        await sleep(200);
    }
}

/** Decryption failures that a later key, key download or backup may still resolve (fail_on_utd waits on them). */
const MAYBE_TRANSIENT_UTD = new Set([
    "MEGOLM_UNKNOWN_INBOUND_SESSION_ID",
    "OLM_UNKNOWN_MESSAGE_INDEX",
    "UNKNOWN_SENDER_DEVICE",
    "HISTORICAL_MESSAGE_WORKING_BACKUP",
    null,
]);

function relatesTo(ev) {
    return ev.getWireContent()?.["m.relates_to"] ?? ev.getContent()?.["m.relates_to"] ?? null;
}

function replyTarget(ev) {
    return relatesTo(ev)?.["m.in_reply_to"]?.event_id ?? null;
}

async function backupSummary() {
    const crypto = requireCrypto();
    const check = await crypto.checkKeyBackupAndEnable();
    return {
        active_version: await crypto.getActiveSessionBackupVersion(),
        check: check
            ? {
                  version: check.backupInfo?.version ?? null,
                  algorithm: check.backupInfo?.algorithm ?? null,
                  trusted: check.trustInfo.trusted,
                  matches_decryption_key: check.trustInfo.matchesDecryptionKey,
              }
            : null,
    };
}

// ------------------------------------------------------------------------------------ interactive verification

const { CryptoEvent, VerificationPhase, VerifierEvent } = cryptoApi;
const PHASES = Object.fromEntries(Object.entries(VerificationPhase).filter(([, v]) => typeof v === "number").map(([k, v]) => [v, k]));
/** Verification requests seen by this peer (incoming and ours): id -> {request, sas, verifyResult}. */
const verifications = new Map();
let verificationSeq = 0;

function trackRequest(request) {
    for (const [id, entry] of verifications) if (entry.request === request) return id;
    const id = `v${++verificationSeq}`;
    const entry = { request, sas: null, verifyResult: null, verifierHooked: false };
    verifications.set(id, entry);
    const hook = () => {
        const verifier = request.verifier;
        if (!verifier || entry.verifierHooked) return;
        entry.verifierHooked = true;
        verifier.on(VerifierEvent.ShowSas, (sas) => {
            entry.sas = sas;
        });
        // verify() sends accept/key as needed and resolves once both MACs matched (or rejects on cancel).
        verifier.verify().then(
            () => (entry.verifyResult = { ok: true }),
            (e) => (entry.verifyResult = { ok: false, error: `${e?.message ?? e}` }),
        );
    };
    request.on("change", hook);
    hook();
    return id;
}

function verificationEntry(id) {
    const entry = verifications.get(need(id, "vid"));
    if (!entry) throw new Error(`unknown verification ${id}`);
    return entry;
}

function describeVerification(id) {
    const { request, sas, verifyResult } = verificationEntry(id);
    return {
        vid: id,
        transaction_id: request.transactionId ?? null,
        room_id: request.roomId ?? null,
        other_user: request.otherUserId,
        other_device: request.otherDeviceId ?? null,
        initiated_by_me: request.initiatedByMe,
        phase: PHASES[request.phase] ?? String(request.phase),
        chosen_method: request.chosenMethod,
        cancellation_code: request.cancellationCode,
        cancelling_user: request.cancellingUserId ?? null,
        emoji: sas?.sas?.emoji ?? null,
        decimal: sas?.sas?.decimal ?? null,
        verify_result: verifyResult,
    };
}

// ------------------------------------------------------------------------------------ commands

const commands = {
    async login({ homeserver, user_id, password, device_name }) {
        if (client) throw new Error("already logged in");
        need(homeserver, "homeserver");
        need(user_id, "user_id");
        need(password, "password");
        const loginClient = sdk.createClient({ baseUrl: homeserver });
        const resp = await loginClient.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: user_id },
            password,
            initial_device_display_name: device_name ?? "ratchet-interop-js",
        });
        loginClient.stopClient();
        ownUserId = resp.user_id;
        client = sdk.createClient({
            baseUrl: homeserver,
            userId: resp.user_id,
            deviceId: resp.device_id,
            accessToken: resp.access_token,
            cryptoCallbacks: { getSecretStorageKey, cacheSecretStorageKey },
        });
        await client.initRustCrypto({ useIndexedDB: false });
        const prepared = new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error("timed out waiting for the first sync")), 30000);
            const onSync = (state) => {
                if (state === sdk.SyncState.Prepared) {
                    clearTimeout(timer);
                    client.off(sdk.ClientEvent.Sync, onSync);
                    resolve();
                }
            };
            client.on(sdk.ClientEvent.Sync, onSync);
        });
        client.on(CryptoEvent.VerificationRequestReceived, (request) => trackRequest(request));
        await client.startClient({ initialSyncLimit: 50 });
        await prepared;
        trace(`logged in as ${resp.user_id} device ${resp.device_id}`);
        return { user_id: resp.user_id, device_id: resp.device_id };
    },

    async bootstrap_cross_signing({ password }) {
        const crypto = requireCrypto();
        await crypto.bootstrapCrossSigning({
            setupNewCrossSigning: true,
            authUploadDeviceSigningKeys: passwordAuth(need(password, "password")),
        });
        return await crossSigningStatus();
    },

    async bootstrap_secret_storage({ passphrase }) {
        const crypto = requireCrypto();
        let generated = null;
        await crypto.bootstrapSecretStorage({
            createSecretStorageKey: async () => {
                generated = await crypto.createRecoveryKeyFromPassphrase(passphrase || undefined);
                return generated;
            },
            setupNewSecretStorage: true,
            setupNewKeyBackup: true,
        });
        if (!generated) throw new Error("bootstrapSecretStorage did not create a secret storage key");
        return {
            recovery_key: generated.encodedPrivateKey,
            key_id: await requireClient().secretStorage.getDefaultKeyId(),
            backup_version: await crypto.getActiveSessionBackupVersion(),
            secret_storage_status: await crypto.getSecretStorageStatus(),
        };
    },

    async set_isolation({ mode }) {
        const crypto = requireCrypto();
        if (mode === "only_signed") crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
        else if (mode === "all") crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(false));
        else throw new Error(`unknown isolation mode ${JSON.stringify(mode)} (use "only_signed" or "all")`);
        return { mode };
    },

    async create_room({ invite = [], encrypted = true, name, timeout_ms = 30000 }) {
        const c = requireClient();
        const opts = { preset: "private_chat", invite, initial_state: [] };
        if (name) opts.name = name;
        if (encrypted) {
            opts.initial_state.push({
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            });
        }
        const { room_id } = await c.createRoom(opts);
        await waitFor(() => c.getRoom(room_id)?.getMyMembership() === "join", timeout_ms, `room ${room_id} to sync`);
        if (encrypted) {
            // Never send before the SDK knows the room is encrypted (it would send in the clear).
            await waitFor(
                () => requireCrypto().isEncryptionEnabledInRoom(room_id),
                timeout_ms,
                `encryption state of ${room_id}`,
            );
        }
        return { room_id };
    },

    async join_room({ room_id, timeout_ms = 30000 }) {
        const c = requireClient();
        await c.joinRoom(need(room_id, "room_id"));
        const room = await waitFor(
            () => {
                const r = c.getRoom(room_id);
                return r?.getMyMembership() === "join" ? r : null;
            },
            timeout_ms,
            `membership in ${room_id}`,
        );
        const encrypted = room.hasEncryptionStateEvent();
        if (encrypted) {
            await waitFor(() => requireCrypto().isEncryptionEnabledInRoom(room_id), timeout_ms, "room encryption");
        }
        return { room_id, encrypted };
    },

    async wait_joined({ room_id, user_id, timeout_ms = 30000 }) {
        const c = requireClient();
        await waitFor(
            () => c.getRoom(room_id)?.getMember(user_id)?.membership === "join",
            timeout_ms,
            `${user_id} to join ${room_id}`,
        );
        return { room_id, user_id };
    },

    async send_text({ room_id, body, reply_to }) {
        const c = requireClient();
        const content = { msgtype: "m.text", body: need(body, "body") };
        if (reply_to) content["m.relates_to"] = { "m.in_reply_to": { event_id: reply_to } };
        const resp = await c.sendMessage(need(room_id, "room_id"), content);
        return { event_id: resp.event_id };
    },

    async wait_message({ room_id, sender, reply_to, body_prefix, timeout_ms = 30000, fail_on_utd = false }) {
        const c = requireClient();
        need(room_id, "room_id");
        const deadline = Date.now() + timeout_ms;
        for (;;) {
            const room = c.getRoom(room_id);
            const utd = [];
            const pending = [];
            for (const ev of room ? room.getLiveTimeline().getEvents() : []) {
                if (sender && ev.getSender() !== sender) continue;
                if (reply_to && replyTarget(ev) !== reply_to) continue;
                if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption?.()) {
                    pending.push(ev.getId());
                    continue;
                }
                if (ev.isDecryptionFailure()) {
                    utd.push({
                        event_id: ev.getId(),
                        sender: ev.getSender(),
                        reason: ev.decryptionFailureReason ?? null,
                    });
                    continue;
                }
                if (ev.getType() !== "m.room.message") continue;
                const content = ev.getContent();
                if (body_prefix && !String(content.body ?? "").startsWith(body_prefix)) continue;
                return {
                    event_id: ev.getId(),
                    sender: ev.getSender(),
                    body: content.body ?? null,
                    encrypted: ev.isEncrypted(),
                    decryption_failure: null,
                    content,
                };
            }
            const timedOut = Date.now() >= deadline;
            const definitive = utd.filter((u) => !MAYBE_TRANSIENT_UTD.has(u.reason));
            if (timedOut || (fail_on_utd && definitive.length > 0)) {
                throw new Error(
                    JSON.stringify({ timeout: timedOut, timeout_ms, room_id, utd, pending, room_known: Boolean(room) }),
                );
            }
            await sleep(100);
        }
    },

    async event_info({ room_id, event_id, timeout_ms = 30000 }) {
        // What the client shows for one event: decrypted or not, and the shield (getEncryptionInfoForEvent), as
        // names of the js-sdk enums (EventShieldColour, EventShieldReason).
        const c = requireClient();
        const crypto = requireCrypto();
        need(room_id, "room_id");
        need(event_id, "event_id");
        const ev = await waitFor(
            () => {
                const e = c.getRoom(room_id)?.findEventById(event_id);
                return e && !e.isBeingDecrypted() && !e.shouldAttemptDecryption?.() ? e : null;
            },
            timeout_ms,
            `event ${event_id} (decryption attempted)`,
        );
        const info = ev.isEncrypted() && !ev.isDecryptionFailure() ? await crypto.getEncryptionInfoForEvent(ev) : null;
        return {
            event_id,
            sender: ev.getSender(),
            type: ev.getType(),
            encrypted: ev.isEncrypted(),
            body: ev.isDecryptionFailure() ? null : ev.getContent()?.body ?? null,
            decryption_failure: ev.isDecryptionFailure() ? ev.decryptionFailureReason ?? "UNKNOWN" : null,
            // The SDK's text for a failure (e.g. Rust crypto's "trust requirement not satisfied: ...").
            failure_detail: ev.isDecryptionFailure() ? String(ev.getContent()?.body ?? "") : null,
            shield_colour: info ? cryptoApi.EventShieldColour[info.shieldColour] ?? String(info.shieldColour) : null,
            shield_reason:
                info && info.shieldReason !== null
                    ? cryptoApi.EventShieldReason[info.shieldReason] ?? String(info.shieldReason)
                    : null,
            sender_curve25519: ev.getSenderKey?.() ?? null,
            claimed_ed25519: ev.getClaimedEd25519Key?.() ?? null,
        };
    },

    async device_status({ user_id, device_id, wait_ms = 10000, expect_signed }) {
        return await deviceStatus(need(user_id, "user_id"), need(device_id, "device_id"), {
            waitMs: wait_ms,
            expectSigned: expect_signed ?? undefined,
        });
    },

    async user_identity({ user_id }) {
        const crypto = requireCrypto();
        need(user_id, "user_id");
        await crypto.userHasCrossSigningKeys(user_id, true);
        await crypto.getUserDeviceInfo([user_id], true);
        const status = await crypto.getUserVerificationStatus(user_id);
        const keys = await crypto.getUserCrossSigningKeys(user_id);
        const keyOf = (k) => (k ? Object.values(k.keys ?? {})[0] ?? null : null);
        const result = {
            known: status.known,
            is_cross_signing_verified: status.isCrossSigningVerified(),
            was_verified: status.wasCrossSigningVerified(),
            needs_user_approval: status.needsUserApproval,
            is_verified: status.isVerified(),
            master_key: keyOf(keys?.master_key),
            self_signing_key: keyOf(keys?.self_signing_key),
        };
        if (user_id === ownUserId) result.own_master_key_id = await crypto.getCrossSigningKeyId();
        return result;
    },

    async cross_signing_status() {
        return await crossSigningStatus();
    },

    async key_backup_info() {
        const crypto = requireCrypto();
        const info = await crypto.getKeyBackupInfo();
        return {
            server_version: info?.version ?? null,
            server_algorithm: info?.algorithm ?? null,
            ...(await backupSummary()),
        };
    },

    async wait_backup_uploaded({ timeout_ms = 30000 }) {
        // Until every room key this device has is in the server-side backup. `olmMachine` is the RustCrypto
        // instance's (non-public) matrix-sdk-crypto handle: the CryptoApi has no key-count call.
        const crypto = requireCrypto();
        if (!(await crypto.getActiveSessionBackupVersion())) throw new Error("key backup is not active");
        const counts = await waitFor(
            async () => {
                const c = await crypto.olmMachine.roomKeyCounts();
                const total = Number(c.total);
                const backedUp = Number(c.backedUp);
                return total === backedUp ? { total, backed_up: backedUp } : null;
            },
            timeout_ms,
            "room keys to reach the key backup",
            200,
        );
        return counts;
    },

    async get_secret({ name, recovery_key }) {
        need(name, "name");
        const value = await withRecoveryKey(recovery_key, () => requireClient().secretStorage.get(name));
        return { value: value ?? null };
    },

    async verify_own_device_with_recovery_key({ recovery_key }) {
        const c = requireClient();
        const crypto = requireCrypto();
        const result = await withRecoveryKey(recovery_key, async () => {
            // Refuse rather than let bootstrapCrossSigning({}) silently make new keys.
            for (const name of ["m.cross_signing.master", "m.cross_signing.self_signing", "m.cross_signing.user_signing"]) {
                if (!(await c.secretStorage.isStored(name))) {
                    throw new Error(`${name} is not in secret storage: nothing to verify this device with`);
                }
            }
            // Our own public identity must be current before importing the private keys.
            if (!(await crypto.userHasCrossSigningKeys(ownUserId, true))) {
                throw new Error("the account has no published cross-signing keys");
            }
            await crypto.bootstrapCrossSigning({});
            let backup = null;
            if (await c.secretStorage.isStored("m.megolm_backup.v1")) {
                await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
                backup = await backupSummary();
            }
            return { backup };
        });
        return {
            cross_signing_status: await crossSigningStatus(),
            device_status: await deviceStatus(ownUserId, c.getDeviceId(), { waitMs: 10000, expectSigned: true }),
            ...result,
        };
    },

    async restore_backup({ recovery_key }) {
        const crypto = requireCrypto();
        return await withRecoveryKey(recovery_key, async () => {
            await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
            await crypto.checkKeyBackupAndEnable();
            const r = await crypto.restoreKeyBackup();
            return { imported: r.imported, total: r.total };
        });
    },

    async verification_request_device({ user_id, device_id }) {
        const request = await requireCrypto().requestDeviceVerification(need(user_id, "user_id"), need(device_id, "device_id"));
        return describeVerification(trackRequest(request));
    },

    async verification_request_dm({ user_id, room_id }) {
        const request = await requireCrypto().requestVerificationDM(need(user_id, "user_id"), need(room_id, "room_id"));
        return describeVerification(trackRequest(request));
    },

    async verification_incoming({ from_user, timeout_ms = 30000 }) {
        // The first request received from `from_user` that is not tracked as answered yet.
        const found = await waitFor(
            () => {
                for (const [id, entry] of verifications) {
                    if (!entry.request.initiatedByMe && (!from_user || entry.request.otherUserId === from_user)) {
                        if (!entry.claimed) {
                            entry.claimed = true;
                            return id;
                        }
                    }
                }
                return null;
            },
            timeout_ms,
            `a verification request from ${from_user ?? "anyone"}`,
        );
        return describeVerification(found);
    },

    async verification_wait({ vid: id, phase, sas = false, verified = false, timeout_ms = 30000 }) {
        const entry = verificationEntry(id);
        await waitFor(
            () => {
                if (phase && PHASES[entry.request.phase] !== phase) {
                    if (entry.request.phase === VerificationPhase.Cancelled && phase !== "Cancelled") {
                        throw new Error(`verification cancelled: ${JSON.stringify(describeVerification(id))}`);
                    }
                    return false;
                }
                if (sas && !entry.sas) return false;
                if (verified && !entry.verifyResult) return false;
                return true;
            },
            timeout_ms,
            `verification ${id} (phase ${phase ?? "any"}, sas ${sas}, verified ${verified})`,
        );
        return describeVerification(id);
    },

    async verification_accept({ vid: id }) {
        await verificationEntry(id).request.accept();
        return describeVerification(id);
    },

    async verification_start_sas({ vid: id }) {
        const entry = verificationEntry(id);
        await entry.request.startVerification("m.sas.v1");
        trackRequest(entry.request);
        return describeVerification(id);
    },

    async verification_confirm({ vid: id }) {
        const entry = verificationEntry(id);
        if (!entry.sas) throw new Error("no short codes shown yet");
        await entry.sas.confirm();
        return describeVerification(id);
    },

    async verification_mismatch({ vid: id }) {
        const entry = verificationEntry(id);
        if (!entry.sas) throw new Error("no short codes shown yet");
        entry.sas.mismatch();
        return describeVerification(id);
    },

    async verification_status({ vid: id }) {
        return describeVerification(id);
    },

    async stop() {
        // handled in dispatch (must answer before exiting)
        return {};
    },
};

// ------------------------------------------------------------------------------------ main loop

function respond(message) {
    return new Promise((resolve) => writeOut(`${JSON.stringify(message)}\n`, () => resolve()));
}

let stopping = false;

async function shutdown(code) {
    if (stopping) return;
    stopping = true;
    try {
        client?.stopClient();
    } catch (e) {
        trace(`stopClient failed: ${e}`);
    }
    // Let stdout drain, then leave (timers and the wasm crypto would keep node alive).
    setTimeout(() => process.exit(code), 50);
}

async function handle(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        await respond({ id: null, ok: false, error: `bad JSON request: ${e.message}` });
        return;
    }
    const { id, cmd, ...args } = request;
    const fn = Object.hasOwn(commands, cmd) ? commands[cmd] : null;
    if (!fn) {
        await respond({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` });
        return;
    }
    const started = Date.now();
    trace(`-> ${id} ${cmd}`);
    try {
        const result = await fn(args);
        trace(`<- ${id} ${cmd} ok (${Date.now() - started} ms)`);
        await respond({ id, ok: true, result: result ?? {} });
    } catch (e) {
        trace(`<- ${id} ${cmd} failed (${Date.now() - started} ms): ${e?.stack ?? e}`);
        const detail = e?.data ? ` [${e.httpStatus ?? ""} ${JSON.stringify(e.data)}]` : "";
        await respond({ id, ok: false, error: `${e?.message ?? e}${detail}` });
    }
    if (cmd === "stop") await shutdown(0);
}

process.on("unhandledRejection", (reason) => trace(`unhandled rejection: ${reason?.stack ?? reason}`));

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
    if (line.trim()) void handle(line);
});
rl.on("close", () => void shutdown(0));
trace(`ready (matrix-js-sdk, node ${process.version})`);
await respond({ id: 0, ok: true, result: { ready: true, node: process.version } });
