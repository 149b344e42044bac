//! A slab whose keys carry a generation, so that a key that outlives its entry never finds the
//! entry that later reuses its slot.

use slab::Slab;

/// A typed key of a [`GenSlab`]: a slot index and the generation it was issued for.
pub trait SlabKey: Copy {
    fn new(index: u32, generation: u32) -> Self;
    fn index(self) -> u32;
    fn generation(self) -> u32;
}

/// A slab of `T` addressed by generation-checked keys of type `K`.
#[derive(Debug)]
pub struct GenSlab<K, T> {
    entries: Slab<(u32, T)>,
    /// The next generation of each slot ever used; kept when the slot is vacated.
    generations: Vec<u32>,
    _key: std::marker::PhantomData<K>,
}

impl<K: SlabKey, T> Default for GenSlab<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: SlabKey, T> GenSlab<K, T> {
    pub fn new() -> Self {
        GenSlab {
            entries: Slab::new(),
            generations: Vec::new(),
            _key: std::marker::PhantomData,
        }
    }

    pub fn with_capacity(capacity: usize) -> Self {
        GenSlab {
            entries: Slab::with_capacity(capacity),
            generations: Vec::with_capacity(capacity),
            _key: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> K {
        let entry = self.entries.vacant_entry();
        let index = entry.key();
        if index == self.generations.len() {
            self.generations.push(0);
        }
        let generation = self.generations[index];
        self.generations[index] = generation.wrapping_add(1);
        entry.insert((generation, value));
        K::new(index as u32, generation)
    }

    /// The key the next [`Self::insert`] will return.
    pub fn vacant_key(&self) -> K {
        let index = self.entries.vacant_key();
        let generation = self.generations.get(index).copied().unwrap_or(0);
        K::new(index as u32, generation)
    }

    pub fn get(&self, key: K) -> Option<&T> {
        match self.entries.get(key.index() as usize) {
            Some((generation, value)) if *generation == key.generation() => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        match self.entries.get_mut(key.index() as usize) {
            Some((generation, value)) if *generation == key.generation() => Some(value),
            _ => None,
        }
    }

    pub fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Removes and returns the entry of `key`, if `key` is still live.
    pub fn remove(&mut self, key: K) -> Option<T> {
        if !self.contains(key) {
            return None;
        }
        Some(self.entries.remove(key.index() as usize).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.entries
            .iter()
            .map(|(index, (generation, value))| (K::new(index as u32, *generation), value))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut T)> {
        self.entries
            .iter_mut()
            .map(|(index, (generation, value))| (K::new(index as u32, *generation), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionKey;

    #[test]
    fn stale_key_does_not_find_the_entry_that_reuses_its_slot() {
        let mut slab: GenSlab<SessionKey, &str> = GenSlab::new();
        let old = slab.insert("old");
        assert_eq!(slab.remove(old), Some("old"));
        let new = slab.insert("new");
        assert_eq!(old.index(), new.index());
        assert_eq!(slab.get(old), None);
        assert_eq!(slab.remove(old), None);
        assert_eq!(slab.get(new), Some(&"new"));
    }

    #[test]
    fn vacant_key_predicts_the_next_insert() {
        let mut slab: GenSlab<SessionKey, u8> = GenSlab::new();
        let a = slab.insert(1);
        slab.remove(a);
        let predicted = slab.vacant_key();
        assert_eq!(slab.insert(2), predicted);
    }
}
