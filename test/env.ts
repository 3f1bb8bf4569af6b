/** Tests talk to the real PostgreSQL and NATS of the machine (README: Tests); these are their defaults. */
process.env.DATABASE_URL ??= "postgresql://postgres@127.0.0.1:5432/arcadia_test";
process.env.TEST_NATS_URL ??= "nats://127.0.0.1:4222";
process.env.AUTH_JWT_SECRET ??= "test-secret-0123456789-0123456789-abcdef";
process.env.LOG_LEVEL ??= "silent";
