import { MikroORM } from "@mikro-orm/postgresql";
import { Migrator } from "@mikro-orm/migrations";
import { Client } from "pg";
import type { ServiceBroker, ServiceSchema, Context } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { migrationsList } from "../migrations";
import { hardenPool, poolSettings } from "./db-pool";

export type Orm = MikroORM;

let embedded = false;

/**
 * Points this process at a database. The embedded one (PGlite) has one backend for every connection: one
 * connection per pool keeps transactions from interleaving on it, and it needs no advisory lock.
 */
export function useDatabase(url: string, opts: { embedded: boolean }) {
  process.env.DATABASE_URL = url;
  if (opts.embedded) process.env.DB_POOL_MAX = "1";
  embedded = opts.embedded;
}

/**
 * True on the embedded database. There, one pool connection serves the whole node and PGlite holds every other
 * connection back while a transaction is open, so no transaction may wait on work that needs the database (an
 * awaited local event handler, a call to a service): it would wait for the connection it holds itself.
 */
export const onEmbeddedDatabase = () => embedded;

export function databaseUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error("DATABASE_URL is not set (bin/start.ts sets it to the embedded database when absent)");
  return url;
}

function baseConfig(entities: any[]) {
  return {
    entities,
    clientUrl: databaseUrl(),
    pool: { min: 0, max: Number(process.env.DB_POOL_MAX ?? 10) },
    // Bounded waits and broken connections dropped and replaced: the pool recovers from any number of outages (lib/db-pool.ts).
    driverOptions: { ...poolSettings(), onPoolCreated: hardenPool },
    debug: false,
    allowGlobalContext: false,
    ensureDatabase: false,
    discovery: { warnWhenNoEntities: false },
  };
}

/** Applies the committed migrations once, serialised across nodes by an advisory lock. */
export async function migrate(): Promise<string[]> {
  const lock = new Client({ connectionString: databaseUrl() });
  if (!embedded) {
    await lock.connect();
    await lock.query("select pg_advisory_lock(727274)");
  }
  try {
    const orm = await MikroORM.init({ ...baseConfig([]), extensions: [Migrator], migrations: { migrationsList, snapshot: false, transactional: true } });
    try {
      const done = await orm.migrator.up();
      return done.map((m) => m.name);
    } finally {
      await orm.close(true);
    }
  } finally {
    if (!embedded) {
      await lock.query("select pg_advisory_unlock(727274)").catch(() => undefined);
      await lock.end();
    }
  }
}

/*
 * One ORM per broker, holding exactly the entities of the services that broker runs: a node opens one pool,
 * and each service still maps only its own tables (its `entities` list).
 */
interface OrmSlot {
  entities: Set<any>;
  orm?: Promise<Orm>;
  users: number;
}
const slots = new WeakMap<ServiceBroker, OrmSlot>();

function slotOf(broker: ServiceBroker): OrmSlot {
  let slot = slots.get(broker);
  if (!slot) slots.set(broker, (slot = { entities: new Set(), users: 0 }));
  return slot;
}

export interface DbService {
  orm: Orm;
}
/** The EntityManager fork the mixin put on this call. */
export const emOf = (ctx: Context<any, any, any>): EntityManager => ctx.locals.em;

/** Mixin: opens the broker's ORM when the service starts and gives each call its own EntityManager fork. */
export function DbMixin(entities: any[]): Partial<ServiceSchema> {
  return {
    created() {
      const slot = slotOf(this.broker);
      entities.forEach((e) => slot.entities.add(e));
    },
    async started() {
      const slot = slotOf(this.broker);
      slot.users++;
      slot.orm ??= MikroORM.init(baseConfig([...slot.entities]));
      this.orm = await slot.orm;
    },
    async stopped() {
      const slot = slotOf(this.broker);
      if (--slot.users === 0 && slot.orm) {
        const orm = await slot.orm;
        slot.orm = undefined;
        await orm.close(true);
      }
    },
    hooks: {
      before: {
        "*"(ctx: Context<any, any, any>) {
          ctx.locals.em = (this as unknown as DbService).orm.em.fork();
        },
      },
    },
    actions: {
      /** For the gateway's /ready: this service's own connection answers. */
      ready: {
        access: "public",
        visibility: "public",
        async handler(this: any) {
          return { database: await this.dbReady() };
        },
      },
    },
    methods: {
      async dbReady(this: any): Promise<boolean> {
        const rows = await (this as DbService).orm.em.getConnection().execute("select 1 as ok");
        return rows[0]?.ok === 1;
      },
    },
  };
}
