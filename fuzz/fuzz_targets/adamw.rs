//! One tensor, a few AdamW steps, any hyperparameters and values. Never panics; an error changes
//! nothing; with moderate inputs a successful step leaves everything finite.
#![no_main]

use came::adamw::{self, AdamWState};
use came_fuzz::{Input, bits, moderate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut input) = Input::decode(data) else {
        return;
    };
    let n: usize = input.dims.iter().product();
    let config = input.header.config.adamw();
    let moderate_config = config.validate().is_ok()
        && config.lr <= 10.0
        && config.eps >= 1e-12
        && config.weight_decay <= 1.0;
    let mut p = input.take(n);
    let mut buf = vec![0.0f32; adamw::state_len(&input.dims)];
    if !input.fresh_state() {
        // second moments are means of squares: an input's negative ones are made positive
        let values = input.take(2 * n);
        buf.copy_from_slice(&values);
        for v in &mut buf[n..] {
            *v = v.abs();
        }
    }
    let mut state = AdamWState::from_parts(&mut buf, 0);
    for _ in 0..input.steps() {
        let g = input.take(n);
        let healthy = moderate_config && moderate(&p) && moderate(&g) && {
            let (m, v) = state.parts();
            moderate(m) && moderate(v)
        };
        let before = (bits(&p), bits(state.parts().0), bits(state.parts().1));
        match adamw::step(&config, &mut p, &g, &mut state) {
            Ok(_) => {
                if healthy {
                    assert!(p.iter().all(|x| x.is_finite()), "non-finite parameters");
                    let (m, v) = state.parts();
                    assert!(m.iter().chain(v).all(|x| x.is_finite()), "non-finite state");
                }
            }
            Err(e) => {
                let after = (bits(&p), bits(state.parts().0), bits(state.parts().1));
                assert_eq!(after, before, "{e}: something changed");
                return;
            }
        }
    }
});
