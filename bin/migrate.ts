import { migrate } from "../lib/db";
import { useEmbeddedPostgres } from "../lib/embedded-postgres";

/** `npm run migrate`: applies the committed migrations to DATABASE_URL, or to the embedded database. */
async function main() {
  const embedded = process.env.DATABASE_URL ? null : await useEmbeddedPostgres();
  try {
    const applied = await migrate();
    console.log(applied.length ? `applied: ${applied.join(", ")}` : "database is up to date");
  } finally {
    await embedded?.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
