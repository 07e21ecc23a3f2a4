//! Which vector unit the fused inference kernels (`conv_block`, `linear`) run on. They add
//! products with `f32::mul_add`, one rounding per product whatever the unit, so every unit
//! gives the same values; what differs is how many accumulators fit in its registers.

/// The CPU's vector unit, as the kernels tile for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    /// x86-64 with AVX-512: 32 registers of 16 lanes.
    Avx512,
    /// x86-64 with AVX2 and FMA: 16 registers of 8 lanes.
    Avx2,
    /// What the target has without runtime detection (aarch64's NEON has fused multiply-add).
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    Native,
}

/// Whether this CPU runs the fused kernels: they need fused multiply-add in hardware (on an
/// x86-64 without FMA, `mul_add` would be a call into libm); elsewhere the model keeps the
/// op-by-op path.
pub fn available() -> bool {
    unit().is_some()
}

/// The vector unit this CPU runs the kernels on.
pub(crate) fn unit() -> Option<Unit> {
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX-512 build also enables FMA: a CPU (or a VM) that hides FMA gets none.
        let fma = std::is_x86_feature_detected!("fma");
        if std::is_x86_feature_detected!("avx512f") && fma {
            return Some(Unit::Avx512);
        }
        if std::is_x86_feature_detected!("avx2") && fma {
            return Some(Unit::Avx2);
        }
        None
    }
    #[cfg(target_arch = "aarch64")]
    {
        Some(Unit::Native)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Every unit this CPU runs, the plain build included (`Native`: on x86-64 its `mul_add` is a
/// call into libm, slow but rounded once like the instruction): the tests check that all give
/// the same values.
#[cfg(test)]
pub(crate) fn all() -> Vec<Unit> {
    let mut units = vec![Unit::Native];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            units.push(Unit::Avx512);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            units.push(Unit::Avx2);
        }
    }
    units
}
