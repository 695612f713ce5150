//! A user's test of their own setup with concord's kit (the guide shows this file).
#![cfg(feature = "testing")]
use concord::testing::{self, proptest, Operation, Setup};
use concord::{Hlc, ManualClock, MvRegister, OrMap, Result};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    email: String,
    verified: bool,
}

/// A verified email wins (else the first sibling's); the longest name wins (ties: the first).
fn merge(siblings: &[&Profile]) -> Profile {
    let mail = siblings.iter().find(|p| p.verified).unwrap_or(&siblings[0]);
    let named = siblings.iter().rev().max_by_key(|p| p.name.len()).unwrap();
    let mut merged = (*mail).clone();
    merged.name = named.name.clone();
    merged
}

type Profiles = OrMap<String, MvRegister<Profile>>;

#[derive(Clone, Debug)]
enum Edit {
    Put(String, Profile),
    Remove(String),
}

impl Operation<Profiles> for Edit {
    fn apply(&self, profiles: &mut Profiles, hlc: &mut Hlc<ManualClock>) -> Result<Profiles> {
        match self {
            Edit::Put(user, profile) => profiles.write(user.clone(), profile.clone(), hlc),
            Edit::Remove(user) => profiles.remove(user, hlc),
        }
    }
}

fn profile() -> impl Strategy<Value = Profile> {
    ("[ab]{0,3}", "[xy]@example[.]com", any::<bool>()).prop_map(|(name, email, verified)| Profile {
        name,
        email,
        verified,
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    let user = prop_oneof![Just("ann".to_string()), Just("bob".to_string())];
    prop_oneof![
        3 => (user.clone(), profile()).prop_map(|(u, p)| Edit::Put(u, p)),
        1 => user.prop_map(Edit::Remove),
    ]
}

#[test]
fn profiles_are_a_lattice() {
    testing::check_type::<Profiles, _>(edit());
}

#[test]
fn the_merge_function_is_sound() {
    testing::check_merge_fn(profile(), merge);
}

#[test]
fn replicas_converge_under_faults() {
    let report = testing::check_setup(Setup::<Profiles, _>::new(edit()).merge_fn(merge));
    assert!(report.resolved > 0, "no conflict to resolve in {report}");
}
