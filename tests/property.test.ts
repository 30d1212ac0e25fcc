// Properties of the pure pieces (no database, no network): the webhook body parser, the
// replay request schema, the forward-only stage decision, the deal choice, the backoff,
// and the webhook signature.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Contact, Lead, PipelineStatus } from '../lib/amocrm/resources.ts';
import { backoffMs, chooseDeal, decideMove, normalizeEmail } from '../lib/sync/decide.ts';
import { replayRequestSchema } from '../lib/sync/replay.ts';
import { PayloadError } from '../lib/http/body.ts';
import { parseWebhookBody } from '../lib/lesson-webhook/payload.ts';
import { sign, verifyWebhook, WebhookVerificationError } from '../lib/lesson-webhook/verify.ts';

const RUNS = { numRuns: 300 };
const PG_INT_MAX = 2_147_483_647;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const WON = 142;
const LOST = 143;

/** No lone surrogate (String.prototype.isWellFormed, which the compiler's lib predates). */
const wellFormed = (text: string) => !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);

/** Runs `fn`, returning what it threw (or undefined). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err;
  }
}

// ---------------------------------------------------------------------------
// parseWebhookBody
// ---------------------------------------------------------------------------
describe('parseWebhookBody', () => {
  /** Either a body that satisfies every promise of the parser, or a PayloadError. */
  function checkParse(value: unknown) {
    let body: ReturnType<typeof parseWebhookBody> | undefined;
    const err = thrown(() => { body = parseWebhookBody(value); });
    if (err !== undefined) {
      expect(err).toBeInstanceOf(PayloadError);
      expect((err as PayloadError).message).toMatch(/^[a-z_.0-9]+: ./i);
      expect([400, 413, 422]).toContain((err as PayloadError).status);
      return;
    }
    expect(body!.table).toBe('lesson_progress');
    expect(body!.schema).toBe('public');
    expect(['INSERT', 'UPDATE']).toContain(body!.type);
    const record = body!.record!;
    expect(record).toBeTypeOf('object');
    expect(record.user_id).toMatch(UUID);
    expect(Number.isInteger(record.lesson_id)).toBe(true);
    expect(record.lesson_id).toBeGreaterThanOrEqual(1);
    expect(record.lesson_id).toBeLessThanOrEqual(PG_INT_MAX);
    if (body!.event_id !== undefined) expect(Number.isSafeInteger(body!.event_id) && body!.event_id > 0).toBe(true);
  }

  it('any JSON value: a valid body or a PayloadError, nothing else', () => {
    fc.assert(fc.property(fc.jsonValue(), checkParse), { numRuns: 500 });
  });

  it('anything at all (functions, symbols, Maps, null prototypes…): a valid body or a PayloadError', () => {
    fc.assert(fc.property(fc.anything({ withBoxedValues: true, withMap: true, withSet: true, withNullPrototype: true, withObjectString: true, withDate: true, withTypedArray: true, withSparseArray: true, withBigInt: true }), checkParse), { numRuns: 500 });
  });

  // Near-valid bodies: each field valid or not, so both branches are exercised.
  const maybe = <T>(valid: fc.Arbitrary<T>) => fc.oneof({ weight: 12, arbitrary: valid }, { weight: 1, arbitrary: fc.jsonValue() });
  const nearlyValid = fc.record({
    type: maybe(fc.constantFrom('INSERT', 'UPDATE', 'INSERT', 'UPDATE', 'DELETE')),
    table: maybe(fc.constantFrom('lesson_progress', 'lesson_progress', 'lesson_progress', 'users')),
    schema: maybe(fc.constantFrom('public', 'public', 'public', 'auth')),
    record: fc.oneof(
      { weight: 6, arbitrary: fc.record({
        user_id: maybe(fc.oneof({ weight: 6, arbitrary: fc.uuid() }, fc.constant('00000000-0000-0000-0000-000000000000'), fc.string())),
        lesson_id: maybe(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 1, max: PG_INT_MAX }) }, fc.integer(), fc.double(), fc.constantFrom(2 ** 31, 1e308, Number.MAX_SAFE_INTEGER + 2, -0))),
        id: fc.option(maybe(fc.oneof(fc.string({ maxLength: 120 }), fc.integer())), { nil: undefined }),
      }, { requiredKeys: ['user_id', 'lesson_id'] }) },
      { weight: 1, arbitrary: fc.constant(null) },
    ),
    old_record: fc.option(maybe(fc.object()), { nil: undefined }),
    event_id: fc.option(maybe(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 1 }) }, fc.double())), { nil: undefined }),
  }, { requiredKeys: ['type', 'table', 'schema', 'record'] });

  it('nearly valid bodies: a valid body or a PayloadError', () => {
    fc.assert(fc.property(nearlyValid, checkParse), { numRuns: 1000 });
  });

  const validBody = fc.record({
    type: fc.constantFrom('INSERT', 'UPDATE'),
    // Other columns of the row; never `id`, whose shape the body schema checks.
    extra: fc.dictionary(fc.string().filter((k) => !['id', 'user_id', 'lesson_id'].includes(k)), fc.jsonValue(), { maxKeys: 5 }),
    user_id: fc.oneof(fc.uuid(), fc.uuid().map((u) => u.toUpperCase())),
    lesson_id: fc.integer({ min: 1, max: PG_INT_MAX }),
    id: fc.option(fc.oneof(fc.string({ maxLength: 100 }), fc.integer()), { nil: undefined }),
    old_record: fc.option(fc.dictionary(fc.string(), fc.jsonValue(), { maxKeys: 3 }), { nil: undefined }),
    event_id: fc.option(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), { nil: undefined }),
    top: fc.dictionary(fc.string().filter((k) => !['type', 'table', 'schema', 'record', 'old_record', 'event_id'].includes(k)), fc.jsonValue(), { maxKeys: 3 }),
  }).map(({ type, extra, user_id, lesson_id, id, old_record, event_id, top }) => ({
    ...top, type, table: 'lesson_progress', schema: 'public',
    record: { ...extra, user_id, lesson_id, ...(id === undefined ? {} : { id }) },
    ...(old_record === undefined ? {} : { old_record }),
    ...(event_id === undefined ? {} : { event_id }),
  }));

  it('valid bodies never throw and keep the ids', () => {
    fc.assert(fc.property(validBody, (value) => {
      const body = parseWebhookBody(value);
      expect(body.record!.user_id).toBe(value.record.user_id);
      expect(body.record!.lesson_id).toBe(value.record.lesson_id);
      expect(body.type).toBe(value.type);
      // The same body after a JSON round trip (what the handler parses) as well.
      expect(parseWebhookBody(JSON.parse(JSON.stringify(value))).record!.lesson_id).toBe(value.record.lesson_id);
    }), { numRuns: 500 });
  });
});

// ---------------------------------------------------------------------------
// replayRequestSchema
// ---------------------------------------------------------------------------
describe('replayRequestSchema', () => {
  function checkReplay(value: unknown) {
    let result: ReturnType<typeof replayRequestSchema.safeParse> | undefined;
    expect(thrown(() => { result = replayRequestSchema.safeParse(value); })).toBeUndefined();
    if (!result!.success) {
      expect(result!.error.issues.length).toBeGreaterThan(0);
      return;
    }
    const r = result!.data;
    expect(Number(r.ids !== undefined) + Number(r.status !== undefined)).toBe(1);
    expect(Number.isInteger(r.limit) && r.limit >= 1 && r.limit <= 500).toBe(true);
    if (r.ids) {
      expect(r.ids.length).toBeGreaterThanOrEqual(1);
      expect(r.ids.length).toBeLessThanOrEqual(500);
      for (const id of r.ids) expect(Number.isSafeInteger(id) && id > 0).toBe(true);
    }
    if (r.status === 'done') expect(r.force).toBe(true);
    if (r.from && r.to) expect(Date.parse(r.from)).toBeLessThan(Date.parse(r.to));
    expect(Number.isSafeInteger(r.afterId) && r.afterId >= 0).toBe(true);
    expect(typeof r.dryRun).toBe('boolean');
    expect(typeof r.force).toBe('boolean');
  }

  it('arbitrary JSON and arbitrary values: success with exactly one of ids/status, or a failure; never throws', () => {
    fc.assert(fc.property(fc.oneof(fc.jsonValue(), fc.anything({ withNullPrototype: true, withBoxedValues: true, withMap: true })), checkReplay), { numRuns: 500 });
  });

  const maybe = <T>(valid: fc.Arbitrary<T>) => fc.oneof({ weight: 12, arbitrary: valid }, { weight: 1, arbitrary: fc.jsonValue() });
  const isoDate = fc.date({ min: new Date('2020-01-01T00:00:00Z'), max: new Date('2030-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString());
  const ids = maybe(fc.oneof(
    { weight: 6, arbitrary: fc.array(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), { maxLength: 20 }) },
    fc.array(fc.oneof(fc.integer({ min: 1 }), fc.integer(), fc.double()), { maxLength: 600 }),
  ));
  const status = maybe(fc.constantFrom('failed', 'dead', 'parked', 'skipped', 'done', 'pending', 'FAILED'));
  const rest = {
    from: maybe(isoDate),
    to: maybe(isoDate),
    limit: maybe(fc.integer({ min: -5, max: 600 })),
    dryRun: maybe(fc.boolean()),
    force: maybe(fc.boolean()),
    afterId: maybe(fc.integer({ min: -5 })),
  };
  const nearlyValid = fc.oneof(
    fc.record({ ids, ...rest }, { requiredKeys: ['ids'] }),
    fc.record({ status, ...rest }, { requiredKeys: ['status'] }),
    fc.record({ ids, status, ...rest }, { requiredKeys: [] }),
  );

  it('nearly valid requests: success with exactly one of ids/status and limit in 1..500, or a failure', () => {
    fc.assert(fc.property(nearlyValid, checkReplay), { numRuns: 1000 });
  });

  it('a request with only status or only ids always parses', () => {
    const ok = fc.oneof(
      fc.record({ status: fc.constantFrom('failed', 'dead', 'parked', 'skipped') }),
      fc.record({ ids: fc.array(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), { minLength: 1, maxLength: 500 }) }),
    );
    fc.assert(fc.property(ok, fc.option(fc.integer({ min: 1, max: 500 }), { nil: undefined }), (body, limit) => {
      const r = replayRequestSchema.safeParse(limit === undefined ? body : { ...body, limit });
      expect(r.success).toBe(true);
      expect(r.data!.limit).toBe(limit ?? 50);
    }), RUNS);
  });
});

// ---------------------------------------------------------------------------
// decideMove: lesson → stage, forward only
// ---------------------------------------------------------------------------
describe('decideMove', () => {
  const statusId = fc.integer({ min: 1, max: 99_999_999 }).filter((id) => id !== WON && id !== LOST);

  /** Distinct Tripwire stage ids, other stages of the pipeline, and an arbitrary sort for each. */
  const pipeline = fc
    .uniqueArray(statusId, { minLength: 2, maxLength: 12 })
    .chain((ids) => fc.record({
      split: fc.integer({ min: 1, max: Math.min(ids.length, 6) }),
      sorts: fc.uniqueArray(fc.integer({ min: 0, max: 100_000 }), { minLength: ids.length, maxLength: ids.length }),
      ids: fc.constant(ids),
    }))
    .map(({ ids, split, sorts }) => {
      const stageIds = ids.slice(0, split);
      const others = ids.slice(split);
      const order: PipelineStatus[] = ids.map((id, i) => ({ id, name: `s${id}`, sort: sorts[i]! }));
      return { stageIds, others, order };
    });

  const withTarget = pipeline.chain((p) => fc.record({ p: fc.constant(p), targetIndex: fc.integer({ min: 0, max: p.stageIds.length - 1 }) }));

  it('never moves a won (142) or lost (143) deal', () => {
    fc.assert(fc.property(withTarget, fc.constantFrom(WON, LOST), fc.boolean(), ({ p, targetIndex }, closed, withOrder) => {
      const order = withOrder ? [...p.order, { id: closed, name: 'closed', sort: -1 }] : undefined;
      expect(decideMove(closed, targetIndex, p.stageIds, order).action).not.toBe('move');
    }), RUNS);
  });

  it('"already" iff the deal is in the target stage', () => {
    const current = withTarget.chain(({ p, targetIndex }) => fc.record({
      p: fc.constant(p), targetIndex: fc.constant(targetIndex),
      current: fc.oneof(fc.constantFrom(...p.stageIds, ...p.others, WON, LOST), statusId),
    }));
    fc.assert(fc.property(current, fc.boolean(), ({ p, targetIndex, current: c }, withOrder) => {
      const decision = decideMove(c, targetIndex, p.stageIds, withOrder ? p.order : undefined);
      expect(decision.action === 'already').toBe(c === p.stageIds[targetIndex]);
    }), RUNS);
  });

  it('from Tripwire stage i: moves iff i < target (whatever the pipeline order says)', () => {
    const at = withTarget.chain(({ p, targetIndex }) => fc.record({
      p: fc.constant(p), targetIndex: fc.constant(targetIndex), i: fc.integer({ min: 0, max: p.stageIds.length - 1 }),
    }));
    fc.assert(fc.property(at, fc.boolean(), ({ p, targetIndex, i }, withOrder) => {
      const decision = decideMove(p.stageIds[i]!, targetIndex, p.stageIds, withOrder ? p.order : undefined);
      expect(decision.action === 'move').toBe(i < targetIndex);
      if (i > targetIndex) expect(decision).toMatchObject({ action: 'skip', code: 'would_move_backwards' });
    }), RUNS);
  });

  it('from a stage sorted after every Tripwire stage: never moves (past_tripwire)', () => {
    fc.assert(fc.property(withTarget, statusId, fc.integer({ min: 1, max: 1000 }), ({ p, targetIndex }, candidate, above) => {
      fc.pre(!p.stageIds.includes(candidate));
      const maxTripwire = Math.max(...p.stageIds.map((id) => p.order.find((s) => s.id === id)!.sort));
      const order = [...p.order.filter((s) => s.id !== candidate), { id: candidate, name: 'paid', sort: maxTripwire + above }];
      const decision = decideMove(candidate, targetIndex, p.stageIds, order);
      expect(decision).toMatchObject({ action: 'skip', code: 'past_tripwire' });
    }), RUNS);
  });

  it('from a non-Tripwire stage: moves iff its sort is below the target\'s; unknown stage never moves', () => {
    fc.assert(fc.property(withTarget, statusId, ({ p, targetIndex }, unknown) => {
      for (const other of p.others) {
        const sortOf = (id: number) => p.order.find((s) => s.id === id)!.sort;
        const decision = decideMove(other, targetIndex, p.stageIds, p.order);
        expect(decision.action === 'move').toBe(sortOf(other) < sortOf(p.stageIds[targetIndex]!));
      }
      fc.pre(!p.stageIds.includes(unknown) && !p.others.includes(unknown));
      expect(decideMove(unknown, targetIndex, p.stageIds, p.order)).toMatchObject({ action: 'skip', code: 'unknown_stage' });
      expect(decideMove(unknown, targetIndex, p.stageIds, undefined).action).not.toBe('move');
    }), RUNS);
  });

  it('a sequence of lesson events (any order, duplicates) never moves the deal back and ends at the highest lesson seen', () => {
    const scenario = pipeline.chain((p) => fc.record({
      p: fc.constant(p),
      events: fc.array(fc.integer({ min: 0, max: p.stageIds.length - 1 }), { maxLength: 30 }),
      incoming: statusId.filter((id) => !p.stageIds.includes(id) && !p.others.includes(id)),
    }));
    fc.assert(fc.property(scenario, ({ p, events, incoming }) => {
      // The deal starts before stage 1: in a stage sorted before every Tripwire stage.
      const minSort = Math.min(...p.stageIds.map((id) => p.order.find((s) => s.id === id)!.sort));
      const order = [...p.order, { id: incoming, name: 'incoming', sort: minSort - 1 }];
      let current = incoming;
      let index = -1;
      for (const target of events) {
        const decision = decideMove(current, target, p.stageIds, order);
        if (decision.action === 'move') current = p.stageIds[target]!;
        const next = p.stageIds.indexOf(current);
        expect(next).toBeGreaterThanOrEqual(index);
        if (decision.action !== 'skip') expect(next).toBe(target);
        index = next;
      }
      expect(index).toBe(events.length ? Math.max(...events) : -1);
    }), RUNS);
  });
});

// ---------------------------------------------------------------------------
// chooseDeal
// ---------------------------------------------------------------------------
describe('chooseDeal', () => {
  const PIPELINE = 5_000_001;
  const OTHER = 5_000_002;
  const BASES = ['anna@school.kz', 'maryanna@school.kz', 'anna@school.kz.evil', 'Ünïcødé@школа.kz', "o'brien@x.kz"];
  /** An e-mail as a human or a CRM might have typed it: case and surrounding whitespace vary. */
  const typed = fc.record({
    base: fc.constantFrom(...BASES),
    upper: fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }),
    left: fc.constantFrom('', ' ', '  ', '\t', '\n '),
    right: fc.constantFrom('', ' ', '\t', ' \n'),
  }).map(({ base, upper, left, right }) => `${left}${[...base].map((ch, i) => (upper[i] ? ch.toUpperCase() : ch)).join('')}${right}`);

  const world = fc
    .uniqueArray(fc.integer({ min: 1, max: 1_000_000 }), { minLength: 0, maxLength: 12 })
    .chain((leadIds) => fc.record({
      leads: fc.tuple(...leadIds.map((id) => fc.record({
        id: fc.constant(id),
        pipeline_id: fc.constantFrom(PIPELINE, PIPELINE, OTHER),
        status_id: fc.constantFrom(WON, LOST, 501, 511, 512, 520),
        updated_at: fc.integer({ min: 1_700_000_000, max: 1_700_001_000 }),
        is_deleted: fc.option(fc.boolean(), { nil: undefined }),
      }))) as fc.Arbitrary<Lead[]>,
      contacts: fc.uniqueArray(fc.integer({ min: 1, max: 1_000_000 }), { maxLength: 6 }).chain((contactIds) => fc.tuple(...contactIds.map((id) => fc.record({
        id: fc.constant(id),
        emails: fc.array(typed, { maxLength: 3 }),
        leadIds: fc.subarray(leadIds),
      })))) as fc.Arbitrary<Contact[]>,
      wanted: typed,
    }));

  it('the chosen deal belongs to a contact with exactly the wanted e-mail, is in the pipeline, and is open when any candidate is', () => {
    fc.assert(fc.property(world, ({ leads, contacts, wanted }) => {
      const choice = chooseDeal(wanted, contacts, leads, PIPELINE);
      const exact = contacts.filter((c) => c.emails.some((e) => e.trim().toLowerCase() === wanted.trim().toLowerCase()));
      const own = new Set(exact.flatMap((c) => c.leadIds));
      const candidates = leads.filter((l) => own.has(l.id) && l.pipeline_id === PIPELINE && !l.is_deleted);
      const isOpen = (l: Lead) => l.status_id !== WON && l.status_id !== LOST;

      expect(choice.lead === undefined).toBe(candidates.length === 0);
      if (!choice.lead) {
        expect(choice.reason).toBe(exact.length ? 'no_deal_in_pipeline' : 'contact_not_found');
        return;
      }
      const lead = choice.lead;
      expect(choice.reason).toBe('chosen');
      expect(lead.pipeline_id).toBe(PIPELINE);
      expect(lead.is_deleted).not.toBe(true);
      expect(exact.some((c) => c.leadIds.includes(lead.id))).toBe(true);
      const holder = contacts.find((c) => c.id === choice.contactId)!;
      expect(holder.leadIds).toContain(lead.id);
      expect(holder.emails.map(normalizeEmail)).toContain(normalizeEmail(wanted));
      if (candidates.some(isOpen)) expect(isOpen(lead)).toBe(true);
      // Among the equally open candidates, the most recently updated.
      const peers = candidates.filter((l) => isOpen(l) === isOpen(lead));
      expect(lead.updated_at).toBe(Math.max(...peers.map((l) => l.updated_at)));
      // Contacts that only look alike are never the holder.
      expect(choice.ignoredContacts.every((c) => !c.emails.some((e) => normalizeEmail(e) === normalizeEmail(wanted)))).toBe(true);
    }), { numRuns: 500 });
  });
});

// ---------------------------------------------------------------------------
// backoffMs
// ---------------------------------------------------------------------------
describe('backoffMs', () => {
  const random = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
  const params = fc.record({
    base: fc.integer({ min: 1, max: 600_000 }),
    capFactor: fc.integer({ min: 1, max: 1000 }),
  }).map(({ base, capFactor }) => ({ base, cap: base * capFactor }));
  const stepOf = (attempt: number, base: number, cap: number) => Math.min(cap, base * 2 ** Math.max(0, attempt - 1));

  it('never shorter than amoCRM asked (Retry-After)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2000 }), random, fc.integer({ min: 0, max: 10_000_000 }), (attempt, r, retryAfter) => {
      expect(backoffMs(attempt, () => r, retryAfter)).toBeGreaterThanOrEqual(retryAfter);
    }), RUNS);
  });

  it('within 50–100 % of min(cap, base·2^(attempt−1)) when Retry-After is small', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 2000 }), random, params, fc.double({ min: 0, max: 0.5, noNaN: true }), (attempt, r, { base, cap }, share) => {
      const step = stepOf(attempt, base, cap);
      const retryAfter = Math.floor(step * share);
      const ms = backoffMs(attempt, () => r, retryAfter, base, cap);
      expect(ms).toBeGreaterThanOrEqual(Math.floor(step * 0.5));
      expect(ms).toBeLessThanOrEqual(step);
    }), RUNS);
  });

  it('the defaults: 30 s base, 1 h cap', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 100 }), random, (attempt, r) => {
      const step = stepOf(attempt, 30_000, 3_600_000);
      const ms = backoffMs(attempt, () => r);
      expect(ms).toBeGreaterThanOrEqual(step / 2);
      expect(ms).toBeLessThanOrEqual(step);
    }), RUNS);
  });

  it('non-decreasing in the attempt for a fixed random', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2000 }), random, params, fc.integer({ min: 0, max: 10_000_000 }), (attempt, r, { base, cap }, retryAfter) => {
      expect(backoffMs(attempt + 1, () => r, retryAfter, base, cap)).toBeGreaterThanOrEqual(backoffMs(attempt, () => r, retryAfter, base, cap));
    }), RUNS);
  });
});

// ---------------------------------------------------------------------------
// verifyWebhook
// ---------------------------------------------------------------------------
describe('verifyWebhook', () => {
  const secret = fc.oneof(
    fc.uint8Array({ minLength: 24, maxLength: 48 }).map((b) => `whsec_${Buffer.from(b).toString('base64')}`),
    // Lone surrogates are left out: UTF-8 encodes every one of them as U+FFFD.
    fc.string({ unit: 'binary', minLength: 16, maxLength: 64 }).filter((x) => wellFormed(x)),
  );
  const msgId = fc.stringMatching(/^[A-Za-z0-9_.-]{1,40}$/);
  const body = fc.oneof(fc.json(), fc.string({ unit: 'binary', minLength: 1, maxLength: 300 }), fc.string({ minLength: 1 }))
    .filter((b) => b.length > 0 && wellFormed(b));
  const NOW = 1_800_000_000;
  const skew = fc.integer({ min: -300, max: 300 });
  const headersFor = (id: string, ts: string, signature: string) => new Headers({ 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': signature });

  it('a body signed with sign(secret, id, ts, body) verifies', () => {
    fc.assert(fc.property(secret, msgId, body, skew, (s, id, b, d) => {
      const ts = String(NOW + d);
      expect(() => verifyWebhook(headersFor(id, ts, sign(s, id, ts, b)), b, s, NOW)).not.toThrow();
    }), RUNS);
  });

  it('flipping any single character of the body makes it throw WebhookVerificationError', () => {
    const flip = body.chain((b) => {
      const points = [...b];
      return fc.record({
        b: fc.constant(b),
        at: fc.integer({ min: 0, max: points.length - 1 }),
        // A whole code point, never a lone surrogate (which would encode like any other).
        to: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }).filter((c) => wellFormed(c)),
      });
    });
    fc.assert(fc.property(secret, msgId, flip, skew, (s, id, { b, at, to }, d) => {
      const points = [...b];
      fc.pre(points[at] !== to);
      points[at] = to;
      fc.pre(wellFormed(b));
      const tampered = points.join('');
      const ts = String(NOW + d);
      const err = thrown(() => verifyWebhook(headersFor(id, ts, sign(s, id, ts, b)), tampered, s, NOW));
      expect(err).toBeInstanceOf(WebhookVerificationError);
      expect((err as Error).message).toMatch(/webhook-signature/);
    }), { numRuns: 500 });
  });

  it('a signature made with another secret, or a stale timestamp, throws WebhookVerificationError', () => {
    fc.assert(fc.property(secret, secret, msgId, body, fc.integer({ min: 301, max: 10_000_000 }), fc.boolean(), (s, other, id, b, off, later) => {
      fc.pre(s !== other);
      const ts = String(NOW);
      expect(thrown(() => verifyWebhook(headersFor(id, ts, sign(other, id, ts, b)), b, s, NOW))).toBeInstanceOf(WebhookVerificationError);
      const stale = String(NOW + (later ? off : -off));
      expect(thrown(() => verifyWebhook(headersFor(id, stale, sign(s, id, stale, b)), b, s, NOW))).toBeInstanceOf(WebhookVerificationError);
    }), RUNS);
  });
});
