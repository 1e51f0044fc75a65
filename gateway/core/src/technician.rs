//! Technician sessions on the local API: who may act (send now, silence, write a point) after
//! logging in with the technician password.
//!
//! IO-free: the adapter (`outpost::io::api::technician`) verifies the password (Argon2id), draws
//! the random session ids and CSRF tokens, and passes them and the time in. A session ends after
//! `idle` without use or `absolute` after login, whichever comes first; at most `max_sessions`
//! live at once (the oldest goes). Every action must carry the session's current CSRF token,
//! which is replaced after each action: a token is good for one action only, so a replayed
//! request is refused.

use std::collections::HashMap;
use std::time::Duration;

use crate::Millis;

/// A session id or CSRF token: 32 random bytes from the adapter.
pub type Secret = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
    pub max_sessions: usize,
}

impl Default for SessionPolicy {
    /// 30 minutes idle, 12 hours in all (a working day on site), 16 sessions.
    fn default() -> Self {
        SessionPolicy {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max_sessions: 16,
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    started: Millis,
    last_used: Millis,
    csrf: Secret,
}

/// Why an action was refused. Each is a 403 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("log in as technician first")]
    NoSession,
    #[error("the session has ended; log in again")]
    Expired,
    #[error("the request carries no CSRF token")]
    NoToken,
    #[error("the CSRF token is not the session's current one (used already, or forged)")]
    WrongToken,
}

#[derive(Debug, Clone)]
pub struct Sessions {
    policy: SessionPolicy,
    by_id: HashMap<Secret, Session>,
}

impl Sessions {
    #[must_use]
    pub fn new(policy: SessionPolicy) -> Sessions {
        Sessions {
            policy,
            by_id: HashMap::new(),
        }
    }

    /// A login succeeded at `now`: session `id` with its first CSRF token.
    pub fn handle_login(&mut self, now: Millis, id: Secret, csrf: Secret) {
        self.expire(now);
        if self.by_id.len() >= self.policy.max_sessions
            && let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
        {
            self.by_id.remove(&oldest);
        }
        self.by_id.insert(
            id,
            Session {
                started: now,
                last_used: now,
                csrf,
            },
        );
    }

    pub fn handle_logout(&mut self, id: &Secret) {
        self.by_id.remove(id);
    }

    /// The session's current CSRF token (for a page that was reloaded), if the session lives.
    pub fn csrf(&mut self, now: Millis, id: &Secret) -> Option<Secret> {
        self.expire(now);
        self.by_id.get(id).map(|s| s.csrf)
    }

    /// An action at `now` from session `id` carrying `token`: allowed (the token is spent and
    /// `next` becomes the session's token) or refused (nothing changes).
    pub fn handle_action(
        &mut self,
        now: Millis,
        id: Option<&Secret>,
        token: Option<&[u8]>,
        next: Secret,
    ) -> Result<(), Refusal> {
        let id = id.ok_or(Refusal::NoSession)?;
        let live = self.by_id.get(id).map(|s| self.alive(s, now));
        match live {
            None => return Err(Refusal::NoSession),
            Some(false) => {
                self.by_id.remove(id);
                return Err(Refusal::Expired);
            }
            Some(true) => {}
        }
        let session = self.by_id.get_mut(id).ok_or(Refusal::NoSession)?;
        let token = token.ok_or(Refusal::NoToken)?;
        if !constant_time_eq(token, &session.csrf) {
            return Err(Refusal::WrongToken);
        }
        session.csrf = next;
        session.last_used = now;
        Ok(())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn alive(&self, s: &Session, now: Millis) -> bool {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        now.as_u64().saturating_sub(s.last_used.as_u64()) < ms(self.policy.idle)
            && now.as_u64().saturating_sub(s.started.as_u64()) < ms(self.policy.absolute)
    }

    fn expire(&mut self, now: Millis) {
        let stale: Vec<Secret> = self
            .by_id
            .iter()
            .filter(|(_, s)| !self.alive(s, now))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.by_id.remove(&id);
        }
    }
}

/// Compares in constant time, so the time taken says nothing of how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Secret = [1; 32];
    const B: Secret = [2; 32];

    fn sessions() -> Sessions {
        Sessions::new(SessionPolicy::default())
    }

    #[test]
    fn an_action_needs_a_session_and_its_current_token_and_spends_it() {
        let mut s = sessions();
        let t = Millis(1000);
        assert_eq!(
            s.handle_action(t, None, Some(&[0; 32]), [9; 32]),
            Err(Refusal::NoSession)
        );
        assert_eq!(
            s.handle_action(t, Some(&A), Some(&[0; 32]), [9; 32]),
            Err(Refusal::NoSession)
        );
        s.handle_login(t, A, [7; 32]);
        assert_eq!(
            s.handle_action(t, Some(&A), None, [9; 32]),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            s.handle_action(t, Some(&A), Some(&[8; 32]), [9; 32]),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            s.handle_action(t, Some(&A), Some(&[7; 32]), [9; 32]),
            Ok(())
        );
        // Replayed: the token was spent.
        assert_eq!(
            s.handle_action(t, Some(&A), Some(&[7; 32]), [10; 32]),
            Err(Refusal::WrongToken)
        );
        assert_eq!(s.csrf(t, &A), Some([9; 32]));
        assert_eq!(
            s.handle_action(t, Some(&A), Some(&[9; 32]), [10; 32]),
            Ok(())
        );
    }

    #[test]
    fn a_session_ends_when_idle_or_old_and_at_logout() {
        let mut s = sessions();
        s.handle_login(Millis(0), A, [7; 32]);
        let idle = Millis(30 * 60 * 1000);
        assert_eq!(
            s.handle_action(idle, Some(&A), Some(&[7; 32]), [8; 32]),
            Err(Refusal::Expired)
        );
        assert!(s.is_empty());

        s.handle_login(Millis(0), B, [7; 32]);
        let mut t = 0;
        let mut token = [7; 32];
        // Used every 20 minutes: alive until 12 hours after login.
        while t + 20 * 60 * 1000 < 12 * 3600 * 1000 {
            t += 20 * 60 * 1000;
            let next = [(t / 60_000 % 251) as u8; 32];
            assert_eq!(
                s.handle_action(Millis(t), Some(&B), Some(&token), next),
                Ok(()),
                "at {t}"
            );
            token = next;
        }
        assert_eq!(
            s.handle_action(Millis(12 * 3600 * 1000), Some(&B), Some(&token), [0; 32]),
            Err(Refusal::Expired)
        );
        s.handle_login(Millis(0), A, [7; 32]);
        s.handle_logout(&A);
        assert_eq!(s.csrf(Millis(1), &A), None);
    }

    proptest! {
        /// However many logins, at most `max_sessions` live, and the newest is always one.
        #[test]
        fn sessions_are_bounded(logins in proptest::collection::vec((any::<u8>(), 0u64..100_000), 1..200)) {
            let mut s = sessions();
            let mut now = 0;
            for (id, step) in logins {
                now += step;
                s.handle_login(Millis(now), [id; 32], [id; 32]);
                prop_assert!(s.len() <= SessionPolicy::default().max_sessions);
                prop_assert_eq!(s.csrf(Millis(now), &[id; 32]), Some([id; 32]));
            }
        }
    }
}
