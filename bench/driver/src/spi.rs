//! SPI round trips (base → module → base), measured inside the base by its `/native/spi-bench`
//! route, against the same trait called directly on an in-process implementation; then the same
//! call fanned out to 10 modules at once; then module → module through the base, and the
//! key-value store, measured inside `bench-module`.

use anyhow::Context;
use serde_json::Value;

use crate::BaseProcess;

pub fn run(base: &BaseProcess, module: &std::path::Path, calls: usize) -> anyhow::Result<String> {
    base.install_path_as(module, "bench-module")?;
    let measure = |size: usize, fanout: bool| -> anyhow::Result<Value> {
        let url = format!("{}/native/spi-bench?calls={calls}&size={size}&fanout={fanout}", base.traffic);
        let answer: Value = ureq::get(&url).call()?.into_json()?;
        anyhow::ensure!(answer["errors"] == 0, "SPI calls failed: {answer}");
        Ok(answer)
    };
    measure(16, false)?; // warm-up
    let mut out = format!(
        "## SPI round trips\n\n\
         Measured inside the base: {calls} sequential calls of `Bench::echo(payload)` through \
         `Remote<BenchSpi>` (serialize, queue on the module's instance, run on its runtime, \
         answer, deserialize) against the same trait called directly on an in-process \
         implementation.\n\n\
         | call | payload | direct p50 µs | direct p99 µs | SPI p50 µs | SPI p99 µs |\n|---|---|---|---|---|---|\n"
    );
    let row = |what: &str, size: &str, v: &Value| -> anyhow::Result<String> {
        let f = |key: &str| v[key].as_f64().with_context(|| format!("{key} in {v}"));
        Ok(format!(
            "| {what} | {size} | {:.2} | {:.2} | **{:.1}** | {:.1} |\n",
            f("direct_p50_us")?,
            f("direct_p99_us")?,
            f("spi_p50_us")?,
            f("spi_p99_us")?
        ))
    };
    out += &row("one module", "16 B", &measure(16, false)?)?;
    out += &row("one module", "10 KiB", &measure(10 * 1024, false)?)?;
    for i in 1..10 {
        base.install_path_as(module, &format!("bench-fan-{i}"))?;
    }
    let fanned = measure(16, true)?;
    out += &row(&format!("fan-out to {} modules", fanned["implementations"]), "16 B", &fanned)?;
    // From inside a module, to another module, through the base.
    let from_module = |size: usize| -> anyhow::Result<Value> {
        let url = format!("{}/bench-module/m2m?calls={calls}&size={size}&target=bench-fan-1", base.traffic);
        let answer: Value = ureq::get(&url).call()?.into_json()?;
        anyhow::ensure!(answer["errors"] == 0, "module-to-module calls failed: {answer}");
        Ok(answer)
    };
    from_module(16)?; // warm-up
    out += &row("module → module", "16 B", &from_module(16)?)?;
    out += &row("module → module", "10 KiB", &from_module(10 * 1024)?)?;
    let kv_calls = calls.min(1000);
    let url = format!("{}/bench-module/kv?calls={kv_calls}&size=100", base.traffic);
    let kv: Value = ureq::get(&url).call()?.into_json()?;
    anyhow::ensure!(kv["errors"] == 0, "key-value calls failed: {kv}");
    let f = |key: &str| kv[key].as_f64().with_context(|| format!("{key} in {kv}"));
    out += &format!(
        "\nThe key-value store from inside a module ({kv_calls} sequential calls, 100-byte values, \
         100 keys; `put` commits durably, with an fsync): `put` p50 **{:.0} µs**, p99 {:.0} µs; \
         `get` p50 **{:.1} µs**, p99 {:.1} µs.\n",
        f("put_p50_us")?,
        f("put_p99_us")?,
        f("get_p50_us")?,
        f("get_p99_us")?
    );
    for i in 1..10 {
        let name = format!("bench-fan-{i}");
        base.uninstall(&name, "0.1.0")?;
    }
    base.uninstall("bench-module", "0.1.0")?;
    Ok(out + "\n")
}
